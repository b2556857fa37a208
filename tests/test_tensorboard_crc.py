"""The C checksum scalewatch swaps into TensorBoard's event writer writes the same bytes."""
import os

from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as python_masked_crc32c
from tensorboard.summary.writer import record_writer

import readback
from scalewatch.callbacks.tensorboard_crc import use_c_crc32c


def test_same_checksums_as_tensorboards_own():
    assert use_c_crc32c()
    fast = record_writer.masked_crc32c
    assert fast is not python_masked_crc32c
    for data in (b"", b"a", os.urandom(7), os.urandom(4096), bytes(range(256)) * 300):
        assert fast(data) == python_masked_crc32c(data)


def test_events_written_with_it_read_back(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    use_c_crc32c()
    writer = SummaryWriter(str(tmp_path))
    for step in range(5):
        writer.add_scalar("x", step * 0.5, step)
    writer.close()
    assert readback.tensorboard_scalars(str(tmp_path), "x") == [(s, s * 0.5) for s in range(5)]
