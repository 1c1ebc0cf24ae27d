"""The ``polaris`` command line (click)."""
