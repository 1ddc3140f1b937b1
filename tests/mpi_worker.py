"""Run under mpirun by tests/test_distributed.py: train a few steps with the
real Trainer, then each rank saves its own weights (rank-<r>.npy) so the test
can check that the ranks agree bit for bit.

    mpirun -n 2 python tests/mpi_worker.py OUT [--fail-at STEP] -- <train flags>
"""
import sys

import numpy as np

from simcore import train
from simcore.distributed import World


def main():
    out, rest = sys.argv[1], sys.argv[2:]
    fail_at = None
    if rest[:1] == ["--fail-at"]:
        fail_at, rest = int(rest[1]), rest[2:]
    args = train.build_parser().parse_args(rest[1:] + ["--out", out])
    world = World()
    trainer = train.Trainer(args, world)
    if fail_at is not None and world.rank == 1:
        real = trainer.model.forward_backward

        def failing(tokens):
            if trainer.state.step == fail_at:
                raise RuntimeError("injected failure")
            return real(tokens)
        trainer.model.forward_backward = failing
    try:
        code = trainer.run()
    except Exception as err:
        world.abort(f"{type(err).__name__}: {err}")
    np.save(f"{out}/rank-{world.rank}.npy", trainer.model.params)
    sys.exit(code)


if __name__ == "__main__":
    main()
