"""The bisect itself, over any subject: ends first, then steps, then verification. Pure.

The subject (``Subject``: a list of Debian packages, or a git tree driven by
``git bisect``) says what to test next and takes each decision; ``test`` runs
one candidate as often as the runs policy asks and gives the decided ``Step``.
Both are edges handed in, so this logic is tested with fakes and run for real
with the same code.

1. The bad end runs first: its failure, reduced to facets, is the signature.
   If it does not fail, or fails only in ways no two of its runs share, stop.
2. The good end runs: every run must pass, else stop (nothing was bisected).
3. Steps until the subject has nothing left to test.
4. Verification: the culprit and its predecessor run again and must give bad
   and good again (and, when the subject can, the bad end with the culprit
   reverted must pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from ..errors import InputError
from .record import Record, Role, Step
from .signature import Signature
from .steps import confidence


@dataclass(frozen=True)
class Candidate:
    label: str
    ref: str                      # what ``test`` is given: a kernel reference, or a commit


@dataclass(frozen=True)
class Found:
    culprit: Candidate | None     # None: ambiguous
    predecessor: Candidate | None
    possible: tuple[Candidate, ...] = ()
    note: str = ""                # the culprit's changelog entry or commit message


class Subject(Protocol):
    def ends(self) -> tuple[Candidate, Candidate]: ...          # (good, bad)
    def next(self) -> Candidate | None: ...
    def mark(self, candidate: Candidate, decision: str) -> None: ...
    def found(self) -> Found: ...
    def left(self) -> int: ...                                       # about how many steps are left
    def reverted(self, culprit: Candidate) -> Candidate | str: ...   # the bad end with it reverted, or why not


Test = Callable[[Role, Candidate, Signature | None], Step]


class Stopped(InputError):
    """The bisect cannot go on (its ends do not behave as ends): the record says why; nothing was blamed."""


def run(subject: Subject, test: Test, record: Record, *, verify_revert: bool = False,
        progress: Callable[[str], None] = lambda _: None, saved: Callable[[Record], None] = lambda _: None) -> Record:
    """Bisect ``subject``; ``record`` is filled in as it goes (``saved`` after every step)."""
    good_end, bad_end = subject.ends()

    def step(role: Role, c: Candidate, sig: Signature | None) -> Step:
        done = test(role, c, sig)
        record.steps.append(done)
        saved(record)
        return done

    bad = step("bad-end", bad_end, None)
    if not bad.runs:
        return _stop(record, f"the bad end {bad_end.label} cannot be tested ({bad.why}): both ends must build and "
                             "run; fix the recipe, or choose another --bad")
    if bad.decision != "bad":
        return _stop(record, f"the bad end {bad_end.label} does not fail ({bad.why}): there is nothing to bisect; "
                             "check the config and --bad")
    signature = Signature.common([r.facets for r in bad.runs if r.cls == "bad"])
    if not signature.facets:
        return _stop(record, f"the bad end {bad_end.label} failed differently in each run "
                             f"({' | '.join(bad.other_failures or tuple('; '.join(r.facets) for r in bad.runs))}): "
                             "no failure to bisect for; raise the config's timeout or narrow its expectation")
    record.signature = signature.facets
    progress(f"signature of the bad end: {signature.text()}")
    good = step("good-end", good_end, signature)
    if not good.runs:
        return _stop(record, f"the good end {good_end.label} cannot be tested ({good.why}): both ends must build and "
                             "run; fix the recipe, or choose another --good")
    if good.decision != "good" or good.flaky or any(c != "good" for c in good.classes):
        what = "failed the same way as the bad end" if good.decision == "bad" else good.why
        return _stop(record, f"the good end {good_end.label} does not pass every run ({what}): choose an older "
                             "--good that passes")
    while (c := subject.next()) is not None:
        done = step("step", c, signature)
        subject.mark(c, done.decision)
        left = subject.left()
        progress(f"{c.label}: {done.decision}" + (" (flaky)" if done.flaky else "") + f": {done.why}; "
                 + (f"about {left} step{'s' if left != 1 else ''} left" if left else "no step left"))
    found = subject.found()
    if found.culprit is None:
        record.state = "ambiguous"
        record.possible = tuple(p.label for p in found.possible)
        record.why = "the first bad kernel is one of these; the others between them could not be tested"
        _confidence(record)
        saved(record)
        return record
    record.state, record.culprit, record.culprit_ref = "found", found.culprit.label, found.culprit.ref
    record.culprit_note = found.note
    saved(record)
    _verify(subject, step, record, found, signature, verify_revert, progress)
    _confidence(record)
    saved(record)
    return record


def _stop(record: Record, why: str) -> NoReturn:
    record.state, record.why = "stopped", why
    raise Stopped(why)


def _verify(subject: Subject, step: Callable[[Role, Candidate, Signature | None], Step], record: Record, found: Found,
            signature: Signature, verify_revert: bool, progress: Callable[[str], None]) -> None:
    assert found.culprit is not None and found.predecessor is not None
    progress(f"verifying: {found.culprit.label} again, and {found.predecessor.label}")
    culprit = step("verify-culprit", found.culprit, signature)
    before = step("verify-predecessor", found.predecessor, signature)
    problems = []
    if culprit.decision != "bad":
        problems.append(f"the culprit {found.culprit.label} did not fail again ({culprit.why})")
    if before.decision != "good" or before.flaky:
        problems.append(f"its predecessor {found.predecessor.label} did not pass again ({before.why})")
    how = f"{found.culprit.label} failed again and {found.predecessor.label} passed again"
    if verify_revert and not problems:
        target = subject.reverted(found.culprit)
        if isinstance(target, str):
            problems.append(f"--verify-revert: {target}")
        else:
            reverted = step("verify-revert", target, signature)
            if reverted.decision != "good" or reverted.flaky:
                problems.append(f"the bad end with the culprit reverted did not pass ({reverted.why})")
            else:
                how += "; the bad end with it reverted passes"
    record.verified = not problems
    record.verification = "; ".join(problems) if problems else how


def _confidence(record: Record) -> None:
    bad = [s.classes for s in record.steps if s.decision == "bad"]
    good = [s.classes for s in record.steps if s.decision == "good"]
    c = confidence(bad, good)
    record.confidence, record.confidence_why = c.value, c.why
