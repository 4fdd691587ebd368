"""Graph or XLA: which compiled form a loop's next call takes, decided from what it costs.

XLA runs a small model's steps several times faster than a plain TensorFlow graph, but
compiling them costs time (XLA's first fit of the notes' model took about twice the
graph's, trace included: bench/RESULTS.md, "Graph or XLA"), and for
some models it is slower per step (XLA:CPU's stateless random numbers make Dropout
steps slower). A short fit would lose more to the compile than XLA can win back,
and a long fit of such a model would lose on every step. So a loop of
`jit_compile="auto"` starts as a graph (traced like `model.fit`'s train function, so a
short fit is never slower than `model.fit`), measures a graph step, and tries XLA when
the steps still to run could repay the compile:

- when the fit's remaining graph time, where its length is known (`plan`), is more
  than `REPAY` times the estimated compile (`COMPILE_PER_TRACE` times the graph's first
  call): XLA at a fifth of a graph step, as for small models, then repays it;
- or once the graph time this loop has spent (over all its calls and fits: a stream of
  unknown length, evaluations, many short fits) exceeds the estimated compile, so that
  the most it can lose is about what it already spent (the rent-or-buy rule).

Once it has run a few XLA calls it compares the fastest step of each: where XLA's steps
are clearly slower (by more than `GIVE_WAY_ABOVE`: a margin for the noise a busy input
pipeline adds to both), the loop goes back to the graph for good. The decisions are kept per model and kind
(train, test, predict), across fits.
"""

import time

COMPILE_PER_TRACE = 2.5   # XLA trace + compile, as a multiple of the graph's first call
REPAY = 1.25              # the remaining graph time must exceed this many compiles
GIVE_WAY_ABOVE = 1.1      # XLA gives way when its step takes more than this many graph steps
JUDGE_AFTER = 3           # XLA calls (after its compile) measured before it is judged


class Mode:
    """The compiled form of one kind of loop ("train", "test", "predict") of one model."""

    def __init__(self, jit_compile, xla_allowed):
        self.adaptive = jit_compile == "auto" and xla_allowed
        self.xla = jit_compile is True
        self.graph_first_call = None    # seconds: the graph's trace + first call
        self.graph_step = None          # seconds per step, from calls after the first
        self.xla_step = None
        self.xla_calls = 0              # XLA calls measured (after the first)
        self.graph_time = 0.0           # spent in graph calls after the first
        self.remaining = None           # steps still to run in this fit, when known
        self._first = {False: True, True: True}   # the next call is a form's first

    def plan(self, steps):
        """This fit's step count (None when unknown)."""
        self.remaining = steps

    def timed(self):
        """A clock for one call: `stop(steps)` records it."""
        return _Clock(self)

    def record(self, seconds, steps, traced=False):
        """A call of `steps` steps took `seconds`; `traced`: it traced (and under XLA
        compiled) a new shape, a cost that is not a step's and that XLA pays too."""
        xla, first = self.xla, self._first[self.xla]
        self._first[xla] = False
        if self.remaining is not None:
            self.remaining = max(self.remaining - steps, 0)
        if not steps:
            return
        if first or traced:
            if first and not xla:
                self.graph_first_call = seconds
            return          # a trace (and compile) is in it
        per_step = seconds / steps
        if xla:
            self.xla_step = per_step if self.xla_step is None else min(self.xla_step, per_step)
            self.xla_calls += 1
        else:
            self.graph_time += seconds
            self.graph_step = per_step if self.graph_step is None \
                else min(self.graph_step, per_step)
        self._decide()

    def _decide(self):
        if not self.adaptive:
            return
        if self.xla:
            if self.xla_calls >= JUDGE_AFTER and self.graph_step is not None \
                    and self.xla_step > GIVE_WAY_ABOVE * self.graph_step:
                self.xla = self.adaptive = False      # XLA is not faster here: graph for good
            return
        if self.graph_step is None or self.graph_first_call is None:
            return
        compile_estimate = COMPILE_PER_TRACE * self.graph_first_call
        ahead = self.remaining is not None \
            and self.remaining * self.graph_step > REPAY * compile_estimate
        if ahead or self.graph_time > compile_estimate:
            self.xla = True

    def give_up_xla(self):
        """XLA cannot compile this model: graph from now on."""
        self.xla = self.adaptive = False


class _Clock:
    def __init__(self, mode):
        self.mode, self.start = mode, time.perf_counter()

    def stop(self, steps, traced=False):
        self.mode.record(time.perf_counter() - self.start, steps, traced)
