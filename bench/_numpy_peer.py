"""In-place NumPy optimizer steps: the "no framework" peer.

Every array is updated with ``out=`` ufuncs; nothing is allocated per step. Large leaves are
processed in chunks so the temporaries stay in cache (a plain whole-array version makes about a
dozen passes over memory and is several times slower at 10M; chunking is what a careful NumPy
user would write). Semantics follow polaris (``eps_root`` inside the square root, LAMB trust
ratio per leaf, Lion's decoupled weight decay); the hyperparameters match ``_common.POLARIS``.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 16


def _chunks(n: int, chunk: int):
    for a in range(0, n, chunk):
        yield a, min(n, a + chunk)


class NumpyStep:
    """``step()`` updates ``params`` (a list of arrays) in place with ``grads``."""

    def __init__(self, opt: str, params: list[np.ndarray], grads: list[np.ndarray], chunk: int = CHUNK):
        self.opt = opt
        self.p = [np.ascontiguousarray(x, dtype=np.float32).reshape(-1).copy() for x in params]
        self.g = [np.ascontiguousarray(x, dtype=np.float32).reshape(-1) for x in grads]
        self.m = [np.zeros_like(x) for x in self.p]
        self.v = [np.zeros_like(x) for x in self.p] if opt in ("adam", "adamw", "lamb") else None
        self.chunk = chunk
        biggest = min(chunk, max(x.size for x in self.p))
        self.t1 = np.empty(biggest, np.float32)
        self.t2 = np.empty(biggest, np.float32)
        self.t = 0
        self.fn = getattr(self, f"_{opt}")

    def step(self) -> None:
        self.t += 1
        self.fn()

    # -- adam family --------------------------------------------------------------------------
    def _adam_dir(self, p, g, m, v, t1, c2, b1=0.9, b2=0.999, eps=1e-8, eps_root=1e-15):
        """m, v updated in place; t1 <- m / (sqrt(v / c2 + eps_root) + eps) (bias c1 left out)."""
        np.multiply(m, b1, out=m)
        np.multiply(g, 1 - b1, out=t1)
        np.add(m, t1, out=m)
        np.multiply(g, g, out=t1)
        np.multiply(t1, 1 - b2, out=t1)
        np.multiply(v, b2, out=v)
        np.add(v, t1, out=v)
        np.multiply(v, 1.0 / c2, out=t1)
        np.add(t1, eps_root, out=t1)
        np.sqrt(t1, out=t1)
        np.add(t1, eps, out=t1)
        np.divide(m, t1, out=t1)

    def _adam(self, lr=1e-3, decay=0.0):
        c1, c2 = 1 - 0.9**self.t, 1 - 0.999**self.t
        for P, G, M, V in zip(self.p, self.g, self.m, self.v, strict=True):
            for a, b in _chunks(P.size, self.chunk):
                p, t1 = P[a:b], self.t1[: b - a]
                self._adam_dir(p, G[a:b], M[a:b], V[a:b], t1, c2)
                if decay:
                    np.multiply(p, 1 - lr * decay, out=p)
                np.multiply(t1, lr / c1, out=t1)
                np.subtract(p, t1, out=p)

    def _adamw(self):
        self._adam(lr=1e-3, decay=0.01)

    def _lamb(self, lr=1e-2, decay=0.01):
        c1, c2 = 1 - 0.9**self.t, 1 - 0.999**self.t
        for P, G, M, V in zip(self.p, self.g, self.m, self.v, strict=True):
            pn = rn = 0.0
            for a, b in _chunks(P.size, self.chunk):  # pass 1: moments and the two norms
                p, t1, t2 = P[a:b], self.t1[: b - a], self.t2[: b - a]
                self._adam_dir(p, G[a:b], M[a:b], V[a:b], t1, c2)
                np.multiply(t1, 1.0 / c1, out=t1)
                np.multiply(p, decay, out=t2)
                np.add(t1, t2, out=t1)
                pn += float(np.dot(p, p))
                rn += float(np.dot(t1, t1))
            trust = np.sqrt(pn) / np.sqrt(rn) if pn > 0 and rn > 0 else 1.0
            for a, b in _chunks(P.size, self.chunk):  # pass 2: recompute r, apply
                p, m, v = P[a:b], M[a:b], V[a:b]
                t1, t2 = self.t1[: b - a], self.t2[: b - a]
                np.multiply(v, 1.0 / c2, out=t1)
                np.add(t1, 1e-15, out=t1)
                np.sqrt(t1, out=t1)
                np.add(t1, 1e-8, out=t1)
                np.divide(m, t1, out=t1)
                np.multiply(t1, lr * trust / c1, out=t1)
                np.multiply(p, 1 - lr * trust * decay, out=p)
                np.subtract(p, t1, out=p)

    # -- momentum family ----------------------------------------------------------------------
    def _sgd_momentum(self, lr=1e-2, momentum=0.9):
        for P, G, M in zip(self.p, self.g, self.m, strict=True):
            for a, b in _chunks(P.size, self.chunk):
                p, m, t1 = P[a:b], M[a:b], self.t1[: b - a]
                np.multiply(m, momentum, out=m)
                np.add(m, G[a:b], out=m)
                np.multiply(m, lr, out=t1)
                np.subtract(p, t1, out=p)

    def _lion(self, lr=1e-4, b1=0.9, b2=0.99, wd=1e-3):
        for P, G, M in zip(self.p, self.g, self.m, strict=True):
            for a, b in _chunks(P.size, self.chunk):
                p, g, m = P[a:b], G[a:b], M[a:b]
                t1, t2 = self.t1[: b - a], self.t2[: b - a]
                np.multiply(m, b1, out=t1)
                np.multiply(g, 1 - b1, out=t2)
                np.add(t1, t2, out=t1)
                np.sign(t1, out=t2)  # not in place: an in-place np.sign is ~8x slower (numpy 2.4)
                np.multiply(t2, lr, out=t2)
                np.multiply(p, 1 - lr * wd, out=p)
                np.subtract(p, t2, out=p)
                np.multiply(m, b2, out=m)
                np.multiply(g, 1 - b2, out=t1)
                np.add(m, t1, out=m)
