"""TensorBoard event files written synchronously on the caller's thread, and the protos gradscope writes.

tensorboard's own EventFileWriter starts a thread per file; the sink already runs on the RunWriter's
thread and writes one event per step, so a plain file with TFRecord framing is enough, leaves no
thread behind, and ``close()`` really closes it.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

_COUNTER = itertools.count()


class EventFile:
    """One ``events.out.tfevents.*`` file in ``log_dir`` (a TensorBoard run); opened on first write."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.log_dir = Path(log_dir)
        self._file: Any = None
        self.closed = False

    def _open(self) -> None:
        from tensorboard.compat.proto import event_pb2

        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_COUNTER)}")
        self._file = open(self.log_dir / name, "wb")  # noqa: SIM115 (kept open until close())
        self._record(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def _record(self, data: bytes) -> None:
        import struct

        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                         + struct.pack("<I", masked_crc32c(data)))

    def add(self, step: int, wall_time: float, values: list[Any]) -> None:
        """One event at ``step`` holding ``values`` (Summary.Value protos)."""
        if self.closed:
            return
        from tensorboard.compat.proto import event_pb2, summary_pb2

        if self._file is None:
            self._open()
        event = event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary_pb2.Summary(value=values))
        self._record(event.SerializeToString())

    def flush(self) -> None:
        if self._file is not None and not self.closed:
            self._file.flush()

    def close(self) -> None:
        self.closed = True
        if self._file is not None:
            f, self._file = self._file, None
            f.close()


# -- protos -----------------------------------------------------------------------------------------
def scalar(tag: str, value: float) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Summary.Value(tag=tag, simple_value=value)


def histogram(tag: str, values: np.ndarray, bins: int = 30) -> Any:
    from tensorboard.compat.proto import summary_pb2

    lo, hi = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=bins if hi > lo else 1, range=(lo, hi if hi > lo else lo + 1))
    histo = summary_pb2.HistogramProto(
        min=lo, max=hi, num=float(values.size), sum=float(values.sum()),
        sum_squares=float(np.square(values).sum()),
        bucket_limit=[float(e) for e in edges[1:]], bucket=[float(c) for c in counts],
    )
    return summary_pb2.Summary.Value(tag=tag, histo=histo)


def image(tag: str, png: bytes, width: int, height: int) -> Any:
    from tensorboard.compat.proto import summary_pb2

    img = summary_pb2.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    return summary_pb2.Summary.Value(tag=tag, image=img)


def _string_tensor(data: bytes) -> Any:
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[data],
                                  tensor_shape=tensor_shape_pb2.TensorShapeProto())


def text(tag: str, body: str) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.text import metadata

    return summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata("", ""),
                                     tensor=_string_tensor(body.encode("utf-8")))


def layout(categories: list[tuple[str, list[tuple[str, str]]]]) -> Any:
    """A custom-scalars layout: [(category, [(chart title, tag regex)])]."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    proto = layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, chart=[
            layout_pb2.Chart(title=chart, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
            for chart, regex in charts
        ])
        for title, charts in categories
    ])
    return summary_pb2.Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG,
                                     metadata=metadata.create_summary_metadata(),
                                     tensor=_string_tensor(proto.SerializeToString()))


def exact(tag: str) -> str:
    """The regex matching exactly ``tag``."""
    return f"^{re.escape(tag)}$"


def safe_dir(name: str) -> str:
    """A directory name for a TensorBoard run: path separators and control characters replaced."""
    return re.sub(r"[/\\\x00-\x1f]", "_", name)[:120] or "_"
