"""``cost_model="measured"``: what a batch costs on this hardware, learned from the
batches that ran, and the rule that picks the next batch by it.

The workers time every batch. :class:`CostFit` fits its time as a fixed cost, plus a
cost per record, per padded token (rows times the longest row) and for a worker's first
batch of a shape, over the last ``WINDOW`` batches, by least squares with no negative
term. Closing a batch, the aggregator offers candidates (``_measured.py``) and
:func:`choose` takes the one whose predicted time goes most to its records' own work:
few large batches where the fixed cost dominates (a small model on a GPU), batches of
similar length where padding does (a CPU, a large model).

The new-shape term is there for GPUs: on an H200, PyTorch ran a batch shape new to
its thread in 48-85 ms against 4-29 ms warm (``benchmarks/bench_gpu.py``). Fitted
as a fixed cost, those runs made every batch look ten times dearer; fitted apart,
they leave the other terms right, and a shape already run is preferred by what it
saves. Once every batch in the window ran warm, the fit keeps the cold cost it last
measured: on the H200, forgetting it made new shapes look free (7 ran in 5 passes,
about 60 ms each). On a CPU the term comes out near zero. Where the fit is not
clearly better informed, the grouped batch goes (see :func:`choose`): a policy that
keeps its choices keeps its shapes, and so runs warm.

The sums follow the window as it slides; a refit first tries the last fit's terms:
mostly one small solve (35-55 µs, ``benchmarks/bench_choose.py``). Plain code.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import combinations

__all__ = ("MARGIN", "WARMUP", "WINDOW", "CostFit", "choose", "first_is_chosen", "fit_batch_time")

#: How many recent batches the fit looks at.
WINDOW = 64
#: How many batches run before the fit is trusted; until then the first candidate goes.
WARMUP = 8

#: How much more of its predicted time another candidate must give its records' own work
#: than the first candidate (the grouped batch) to be taken instead of it.
MARGIN = 0.1

#: How many batch shapes it remembers; past that it forgets them all (then new until run again).
SHAPES = 1 << 16

#: A timed batch: ``(records, padded tokens, 1 if its worker ran that shape for the
#: first time else 0, seconds)``.
Sample = tuple[int, int, int, float]
#: ``(fixed seconds, seconds per record, seconds per padded token, seconds for a new shape)``.
Coefficients = tuple[float, float, float, float]

# Every non-empty subset of the four terms, for the fit with no negative term.
_TERMS = [terms for size in (1, 2, 3, 4) for terms in combinations(range(4), size)]
_TERMS_KNOWN = [terms for terms in _TERMS if 3 not in terms]


class CostFit:
    """The batch times seen lately, their fit (``None`` during warm-up), and the shapes each worker ran."""

    __slots__ = ("_added", "_cold", "_samples", "_shapes", "_sums", "_terms", "coefficients")

    def __init__(self) -> None:
        self._samples: deque[Sample] = deque(maxlen=WINDOW)
        #: The normal equations' sums over the window, kept up to date as it slides.
        self._sums = _Sums()
        self._added = 0
        #: Each shape ``(records, padded)`` run so far, with the workers that ran it (bit i: worker i).
        self._shapes: dict[tuple[int, int], int] = {}
        #: The new-shape cost last fitted from a window that held both cold and warm runs.
        self._cold = 0.0
        #: The terms of the last fit, the first tried in the next (see :meth:`_Sums.fit`).
        self._terms: tuple[int, ...] | None = None
        self.coefficients: Coefficients | None = None

    def add(self, records: int, padded: int, seconds: float, worker: int = 0) -> None:
        """Note a batch that ``worker`` ran, and refit once ``WARMUP`` batches are in."""
        if len(self._shapes) >= SHAPES:
            self._shapes.clear()
        workers = self._shapes.get((records, padded), 0)
        new = not workers >> worker & 1
        self._shapes[records, padded] = workers | 1 << worker
        sample = (records, padded, int(new), seconds)
        samples, sums = self._samples, self._sums
        self._added += 1
        leaving = samples[0] if len(samples) == WINDOW else None
        if self._added % WINDOW == 0 or (leaving is not None and sums.dwarfed_by(leaving)):
            # From scratch now and then, so rounding does not pile up, and when one sample dwarfed the rest.
            samples.append(sample)
            self._sums = sums = _Sums(samples)
        else:
            if leaving is not None:
                sums.add(leaving, -1.0)
            samples.append(sample)
            sums.add(sample, 1.0)
        if len(samples) >= WARMUP:
            (fixed, per_record, per_token, per_new), self._terms = sums.fit(self._terms)
            cold = sums.new_shapes()
            if cold < 0.5:  # only warm runs: the cost of a cold one as last fitted
                per_new = self._cold
            elif cold < len(samples) - 0.5:  # cold and warm runs: the fit tells them apart
                self._cold = per_new
            self.coefficients = (fixed, per_record, per_token, per_new)

    def forget(self, worker: int) -> None:
        """A new worker (a cold thread) takes the index of ``worker``, which left."""
        bit = 1 << worker
        self._shapes = {shape: workers & ~bit for shape, workers in self._shapes.items() if workers & ~bit}

    @property
    def batches(self) -> int:
        """How many batches the fit is over (the window's)."""
        return len(self._samples)

    @property
    def blind(self) -> bool:
        """Whether every batch in the window ran a shape new to its worker: then the
        fit cannot tell a cold run's cost from the fixed cost, nor what a warm batch
        costs, and :func:`choose` does not trust it."""
        return self._sums.new_shapes() > len(self._samples) - 0.5

    def known(self, records: int, padded: int) -> bool:
        """Whether some worker has run a batch of this shape."""
        return (records, padded) in self._shapes

    def predict(self, records: int, padded: int, new: bool = False) -> float:
        """The predicted seconds of a batch, ``new`` if of a shape not run (0.0 before a fit)."""
        if self.coefficients is None:
            return 0.0
        fixed, per_record, per_token, per_new = self.coefficients
        return fixed + per_record * records + per_token * padded + (per_new if new else 0.0)


def fit_batch_time(samples: Sequence[Sample]) -> Coefficients:
    """Least-squares ``time = fixed + per_record * records + per_token * padded +
    per_new * new`` with every coefficient >= 0: of the fits on each subset of the
    terms whose coefficients are all non-negative, the one with the smallest squared
    error (with none, the mean time as a fixed cost)."""
    return _Sums(samples).fit()[0]


class _Sums:
    """X'X, X'y and y'y of samples whose rows x are (1, records, padded, new): all a
    least-squares fit needs, kept as samples come and go."""

    __slots__ = ("gram", "moments", "squares")

    def __init__(self, samples: Sequence[Sample] = ()) -> None:
        self.gram = [[0.0] * 4 for _ in range(4)]
        self.moments = [0.0] * 4
        self.squares = 0.0
        for sample in samples:
            self.add(sample, 1.0)

    def add(self, sample: Sample, sign: float) -> None:
        """Count a sample in (``sign`` 1.0) or out (-1.0)."""
        records, padded, new, seconds = sample
        x = (sign, sign * records, sign * padded, sign * new)  # the sign rides on one factor
        y = (1.0, records, padded, new)
        gram, moments = self.gram, self.moments
        for i in range(4):
            moments[i] += x[i] * seconds
            row = gram[i]
            for j in range(i, 4):
                row[j] += x[i] * y[j]
        self.squares += sign * seconds * seconds

    def dwarfed_by(self, sample: Sample) -> bool:
        """Whether taking ``sample`` out would leave the others as its rounding error."""
        _, padded, _, seconds = sample
        tokens, squared = float(padded) * padded, seconds * seconds
        return tokens > 1e6 * (self.gram[2][2] - tokens) or squared > 1e6 * (self.squares - squared)

    def new_shapes(self) -> float:
        """How many of the samples ran a shape new to their worker."""
        return self.gram[0][3]

    def fit(self, hint: tuple[int, ...] | None = None) -> tuple[Coefficients, tuple[int, ...] | None]:
        """The fit with no negative coefficient, and the terms it uses.

        The least-squares fit on some subset of the terms. ``hint``'s subset (the last
        fit's) is tried first, kept if no coefficient is negative and no term left out
        would lower the error (the optimality conditions of this convex problem); then
        the fit on every term; else the best subset's. The hint spares most solves, and
        of equally good fits keeps the one it had.
        """
        gram = [[self.gram[min(i, j)][max(i, j)] for j in range(4)] for i in range(4)]
        moments, squares = self.moments, self.squares
        # Where every batch was of a new shape (or none was), the new-shape cost cannot be
        # told from the fixed cost: it is left at zero, so a known shape is not predicted free.
        mixed = 0.5 < gram[0][3] < gram[0][0] - 0.5
        subsets = _TERMS if mixed else _TERMS_KNOWN
        if hint in subsets and (kept := _optimal(gram, moments, hint, subsets[-1])) is not None:
            return kept, hint
        whole = _fit_terms(gram, moments, squares, subsets[-1])
        if whole is not None:
            return whole[1], subsets[-1]
        fits = [(*fitted, terms) for terms in subsets[:-1] if (fitted := _fit_terms(gram, moments, squares, terms))]
        if not fits:
            return (moments[0] / gram[0][0], 0.0, 0.0, 0.0), None
        _, coefficients, terms = min(fits)
        return coefficients, terms


def _optimal(
    gram: list[list[float]], moments: list[float], terms: tuple[int, ...], every: tuple[int, ...]
) -> Coefficients | None:
    """The least-squares fit on ``terms`` if it is the best with no negative coefficient
    over the terms ``every``, else ``None``: none of its coefficients is negative, and
    for each term left out, the error's slope as that term's coefficient rises from 0
    is not negative."""
    full = _fit_on(gram, moments, terms)
    if full is None:
        return None
    # X_out' (y - X c): positive where bringing ``out`` in would lower the error.
    slopes = [moments[out] - sum(g * c for g, c in zip(gram[out], full, strict=True)) for out in every]
    if any(slope > 0 for out, slope in zip(every, slopes, strict=True) if out not in terms):
        return None
    return (full[0], full[1], full[2], full[3])


def _fit_terms(
    gram: list[list[float]], moments: list[float], squares: float, terms: tuple[int, ...]
) -> tuple[float, Coefficients] | None:
    """The squared error and coefficients of the fit on ``terms`` alone, or ``None``
    if it is singular or has a negative coefficient."""
    full = _fit_on(gram, moments, terms)
    if full is None:
        return None
    # sum((y - c.x)^2) = y'y - 2 c'X'y + c'X'Xc, and at the least-squares c, X'Xc = X'y
    error = squares - sum(c * m for c, m in zip(full, moments, strict=True))
    return error, (full[0], full[1], full[2], full[3])


def _fit_on(gram: list[list[float]], moments: list[float], terms: tuple[int, ...]) -> list[float] | None:
    """The four coefficients of the least-squares fit on ``terms`` (0 for the others),
    or ``None`` if it is singular or has a negative coefficient."""
    solved = _solve([[gram[i][j] for j in terms] for i in terms], [moments[i] for i in terms])
    if solved is None or min(solved) < 0:
        return None
    full = [0.0, 0.0, 0.0, 0.0]
    for term, value in zip(terms, solved, strict=True):
        full[term] = value
    return full


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float] | None:
    # Gaussian elimination with partial pivoting on a system of at most 4 unknowns;
    # one or two unknowns (10 of the 15 subsets) in closed form, the same test for singular.
    size = len(vector)
    if size <= 2:
        return _solve_small(matrix, vector)
    rows = [[*matrix[i], vector[i]] for i in range(size)]
    scale = max((abs(value) for row in rows for value in row[:size]), default=0.0)
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) <= 1e-12 * max(scale, 1e-300):
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, size):
            factor = rows[r][col] / rows[col][col]
            rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return _back_substitute(rows)


def _back_substitute(rows: list[list[float]]) -> list[float]:
    # The solution of an upper-triangular system, each row ending with its right side.
    size = len(rows)
    solution = [0.0] * size
    for r in range(size - 1, -1, -1):
        done = sum(rows[r][c] * solution[c] for c in range(r + 1, size))
        solution[r] = (rows[r][size] - done) / rows[r][r]
    return solution


def _solve_small(matrix: list[list[float]], vector: list[float]) -> list[float] | None:
    if len(vector) == 1:
        return [vector[0] / matrix[0][0]] if matrix[0][0] > 0 else None
    (a, b), (c, d) = matrix
    det = a * d - b * c
    first = max(abs(a), abs(c))  # the elimination's pivots: ``first`` and ``det / first``
    scale = max(first, abs(b), abs(d), 1e-300)
    if first <= 1e-12 * scale or abs(det) <= 1e-12 * scale * first:
        return None
    return [(vector[0] * d - b * vector[1]) / det, (a * vector[1] - c * vector[0]) / det]


def choose(candidates: Sequence[tuple[int, int, int]], fit: CostFit) -> int:
    """The index of the best candidate batch, each given as ``(records, padded tokens,
    real tokens)``: the one whose predicted time goes most to the records' own work.

    A record's own work is what it would cost in a batch with no padding and no fixed
    cost (``per_record + per_token * its tokens``); a batch's share of it is that sum
    over its predicted time, which counts the new-shape cost for a shape no worker has
    run. Where the fixed cost dominates, the largest batch has the largest share;
    where padding does, a batch of similar lengths. (Records per second would prefer
    mixing short records into a long one's padding, leaving the long ones for later.)
    Ties go to the batch with more records, then to the earlier candidate.

    The first candidate (the grouped batch) goes during warm-up (no fit yet), while
    the fit is blind (every batch in its window was of a shape new to its worker, as
    in a GPU's first pass, where a cold run's cost and the fixed cost cannot be told
    apart), and unless another's share is more than ``MARGIN`` above its own. A
    smaller predicted gain is within what the fit gets wrong on a busy machine, and
    each change of choice has a price the fit does not see: it leaves a different
    queue, and so different shapes for the batches after it, each of which runs cold
    once on a GPU. Measured with ``benchmarks/bench_cold_shapes.py`` (closed loop,
    third pass): without the margin 35 batches of a new shape and 1,856 texts/s, with
    it none and 9,915/s, level with grouping; benchmark F (MiniLM on a CPU) kept its
    gains in both loops.
    """
    if fit.coefficients is None or fit.blind:
        return 0
    keys = [(_share(candidate, fit), candidate[0]) for candidate in candidates]
    best = max(range(len(keys)), key=keys.__getitem__)  # the earliest of equal keys
    return 0 if 0 < keys[best][0] <= keys[0][0] * (1 + MARGIN) else best


def first_is_chosen(first: tuple[int, int, int], records: int, real: int, fit: CostFit) -> bool:
    """Whether :func:`choose` takes ``first`` whatever the other candidates, given that
    none holds more than ``records`` records or ``real`` real tokens; then they need
    not be planned.

    A batch's predicted time is at least its fixed cost plus its records' own work (its
    padded tokens are at least its real ones), so no share can pass ``own / (fixed +
    own)`` for the most own work any candidate could hold. Where that is within
    ``MARGIN`` of the first's share, the first goes: in a closed loop, where every
    waiting record fits one batch (a small model on a GPU), or where the first batch
    wastes little. Where no candidate's records do any work of their own (only a fixed
    cost was fitted, as for a model that sleeps), every share is 0 and the most records
    go: the first, if no candidate can hold more. It spares planning the other four,
    most of a take's time (``benchmarks/bench_choose.py``, BENCHMARKS.md).
    """
    if fit.coefficients is None or fit.blind:
        return True
    fixed, per_record, per_token, _ = fit.coefficients
    own = per_record * records + per_token * real
    if own == 0 < fixed:  # every share is 0: the most records go (a sleep, say)
        return first[0] >= records
    share = _share(first, fit)
    most = own / (fixed + own) if fixed + own > 0 else 1.0
    return 0 < share and most <= share * (1 + MARGIN)


def _share(candidate: tuple[int, int, int], fit: CostFit) -> float:
    """The part of a candidate's predicted time that goes to its records' own work
    (1.0 if it is predicted to take no time)."""
    records, padded, real = candidate
    _, per_record, per_token, _ = fit.coefficients or (0.0, 0.0, 0.0, 0.0)
    seconds = fit.predict(records, padded, new=not fit.known(records, padded))
    return (per_record * records + per_token * real) / seconds if seconds > 0 else 1.0
