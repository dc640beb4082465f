"""Fuzzing past the codec: well-formed frames with extreme values, from several
users at once, into a real node (gateway session, im, state, SQLite) in process.

Every request must be answered with its reply or a documented error (never
INTERNAL, never silence), nothing may be logged at ERROR, the ordinary pair
chatting beside the attackers must keep being served, and at the end every
message they were acked is delivered once, in order, to both (the checker)
and their history is contiguous. One node serves every example of a module
(examples are short; a fresh node each would cost more than the example).

CI runs `SINGLE_EXAMPLES + BATCH_EXAMPLES` cases (10,000); `scripts/fuzz`
runs the same properties for as long as asked, with a seed and a corpus.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from tests.fuzz import frames
from tests.fuzz.run import ATTACKERS, FuzzRun

SINGLE_EXAMPLES = int(os.environ.get("CHATPLANE_FUZZ_SINGLE", "7000"))
BATCH_EXAMPLES = int(os.environ.get("CHATPLANE_FUZZ_BATCHES", "3000"))
SEED = os.environ.get("CHATPLANE_FUZZ_SEED")
CORPUS = os.environ.get("CHATPLANE_FUZZ_CORPUS")


def fuzz_settings(examples: int) -> settings:
    database: ExampleDatabase | None = (DirectoryBasedExampleDatabase(CORPUS) if CORPUS
                                        else None)
    return settings(max_examples=examples, deadline=None, database=database,
                    suppress_health_check=list(HealthCheck), print_blob=True)


def seeded(test: object) -> object:
    return seed(int(SEED))(test) if SEED else test


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRun]:
    loop = asyncio.new_event_loop()
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    run = FuzzRun(loop, data_dir)
    run.start()
    yield run
    run.stop()
    loop.close()


def test_single_frames_of_every_kind(fuzz_run: FuzzRun) -> None:
    """One frame per example from one attacker: through a gateway connection
    (with or without the pair sending beside it), or handed to im as a peer
    tier's `Im.Handle` would (the cheap part of the cases)."""
    @seeded
    @fuzz_settings(SINGLE_EXAMPLES)
    @given(attacker=st.sampled_from(ATTACKERS), draft=frames.any_frame,
           way=st.sampled_from(["gateway", "gateway+pair", "im"]))
    def one_frame(attacker: str, draft: frames.Draft, way: str) -> None:
        if way == "im":  # as another tier would call Im.Handle
            fuzz_run.through_im(attacker, draft)
        else:
            fuzz_run.step([(attacker, draft)], ordinary=way == "gateway+pair")

    one_frame()
    fuzz_run.settle()


def test_batches_from_several_users_at_once(fuzz_run: FuzzRun) -> None:
    """Up to six frames from the three attackers in flight together, sometimes
    a fresh connection whose Login carries extreme values with up to three
    frames pipelined behind it, and the pair's two sends in the middle of it
    all."""
    @seeded
    @fuzz_settings(BATCH_EXAMPLES)
    @given(batch=st.lists(st.tuples(st.sampled_from(ATTACKERS), frames.any_frame),
                          min_size=1, max_size=6),
           login=st.one_of(st.none(), st.tuples(frames.login_fields,
                                                 st.lists(frames.any_frame, max_size=3))))
    def batch_of_frames(batch: list[tuple[str, frames.Draft]],
                        login: tuple[dict[str, object], list[frames.Draft]] | None) -> None:
        fuzz_run.step(batch, login)

    batch_of_frames()
    fuzz_run.settle()
