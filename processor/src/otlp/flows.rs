//! OTLP export of the network flow metrics: the cumulative sums `beyla.network.flow.bytes`
//! (`By`) and `beyla.network.flow.packets` (`{packet}`) of one host-level meter pipeline,
//! collected with the processes' pipelines each interval. Its resource names the host and
//! the agent, not a process: flows belong to interfaces.

use opentelemetry::{
    KeyValue,
    metrics::{Counter, MeterProvider},
};
use opentelemetry_sdk::Resource;

use super::meters::Meters;

/// The key of the flows' pipeline among the processes' (no pid reaches it: `pid_max` is at
/// most 2^22).
pub(super) const FLOWS_PIPELINE: u32 = u32::MAX;

/// The two flow sums.
pub(super) struct FlowInstruments {
    bytes: Counter<u64>,
    packets: Counter<u64>,
}

impl FlowInstruments {
    /// Makes the host pipeline and its instruments.
    pub(super) fn new(meters: &Meters, host: &str) -> FlowInstruments {
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "sonde-network-flows"),
                KeyValue::new("host.name", host.to_string()),
                KeyValue::new("os.type", "linux"),
                KeyValue::new("telemetry.sdk.name", "sonde"),
                KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        let provider = meters.host_provider(FLOWS_PIPELINE, resource);
        let meter = provider.meter("sonde");
        FlowInstruments {
            bytes: meter
                .u64_counter("beyla.network.flow.bytes")
                .with_unit("By")
                .with_description("Bytes of the network flows seen on this host's interfaces, IP headers included")
                .build(),
            packets: meter
                .u64_counter("beyla.network.flow.packets")
                .with_unit("{packet}")
                .with_description("Packets of the network flows seen on this host's interfaces")
                .build(),
        }
    }

    pub(super) fn add(
        &self,
        bytes_attrs: &[KeyValue],
        bytes: u64,
        packets_attrs: &[KeyValue],
        packets: u64,
    ) {
        self.bytes.add(bytes, bytes_attrs);
        self.packets.add(packets, packets_attrs);
    }
}
