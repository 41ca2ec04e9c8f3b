//! A generic staged-dataflow runtime: stages joined by bounded channels, wired from a
//! TOML file, each recording queue wait and service time. It knows nothing of models or
//! HTTP; `crate::stages` supplies the stage kinds.

pub mod channel;
pub mod exposition;
pub mod faults;
pub mod lifecycle;
pub mod metrics;
pub mod runtime;
pub mod spec;
pub mod trace;

pub use channel::{Answerable, Inlet, Keyed, Outlet, SendError};
pub use exposition::Exposition;
pub use faults::{FaultPoint, Faults};
pub use lifecycle::{Lifecycle, Ticket};
pub use metrics::{LatencyHistogram, StageMetrics, Summary};
pub use runtime::{Catalog, Pipeline, Registry, Stage, StageShape, check_faults};
pub use spec::{PipelineSpec, SpecError, StageSpec};
pub use trace::{Service, StageTime, StageTrace};

/// What a caught panic said (its `String` or `&str` payload).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown error")
}
