"""What the window operator returns from each call: :class:`WindowOutput`.

Windows are reported as :class:`~iotdata.sinks.WindowAggregate` records, ready for any sink:
``count``, ``min``, ``max`` and ``sum`` (exact, correctly rounded) always, and the outputs of the
operator's other aggregations in ``extra`` by name (``mean`` too is left out of ``extra``:
``WindowAggregate.mean`` is ``sum / count``, the same number). When the operator's key leaves
out the device or the metric, that field is ``"*"``.
"""

from __future__ import annotations

import attrs

from iotdata.model import Batch
from iotdata.sinks import WindowAggregate

__all__ = ["ANY", "WindowOutput"]

#: Stands in for the device id or metric of a key that does not include it.
ANY = "*"


@attrs.frozen
class WindowOutput:
    """What one call of the window operator gives back.

    * ``results``: the windows this call closed, each emitted for the last time (its final
      ``revision``), after which the window is gone;
    * ``updates``: with ``emit_updates=True``, the windows the call's batch changed that are
      still open (``revision`` 0, 1, ... counts a window's emissions);
    * ``late``: the readings of the batch that arrived behind the watermark and were not
      aggregated, as a batch of the same device (columns sorted by ts).
    """

    results: tuple[WindowAggregate, ...] = ()
    updates: tuple[WindowAggregate, ...] = ()
    late: tuple[Batch, ...] = ()
