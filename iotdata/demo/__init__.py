"""The whole library in one process: ``iotdata demo``.

:func:`run_demo` runs a simulated fleet (:class:`~iotdata.device.SyntheticSignal` devices with
injected spikes, level shifts, stuck stretches and dropouts) through real
:class:`~iotdata.device.DeviceClient` objects with durable queues, the codec, a bridge that
validates every frame as the gateway does, the embedded partitioned log, and a stream
:class:`~iotdata.stream.Pipeline` (dedup, one-minute windows, detectors) into SQLite (readings,
aggregates, alerts) and Parquet (the cold path, when pyarrow is installed). It then scores the
detectors against the injected anomalies and draws a chart (a self-contained HTML page).

With ``mqtt``/``kafka``/``postgres`` in :class:`DemoOptions` the same pipeline runs through the
real services: devices publish to the MQTT broker, the :class:`~iotdata.gateway.Gateway` bridges
into Kafka, a :class:`~iotdata.stream.KafkaSource` feeds the pipeline, and PostgreSQL is the
warm store. The data are deterministic for a seed (their timestamps start at a fixed instant),
so running the demo again lands on the same keys and stores nothing twice.
"""

from iotdata.demo._run import DemoOptions, DemoProgress, DemoSummary, Detection, run_demo

__all__ = ["DemoOptions", "DemoProgress", "DemoSummary", "Detection", "run_demo"]
