//! A generic staged-dataflow runtime: stages joined by bounded channels, wired from a
//! TOML file, each recording queue wait and service time. It knows nothing of models or
//! HTTP; `crate::stages` supplies the stage kinds.

pub mod channel;
pub mod exposition;
pub mod metrics;
pub mod runtime;
pub mod spec;
pub mod trace;

pub use channel::{Inlet, Keyed, Outlet, SendError};
pub use exposition::Exposition;
pub use metrics::{LatencyHistogram, StageMetrics, Summary};
pub use runtime::{Catalog, Pipeline, Registry, Stage, StageShape};
pub use spec::{PipelineSpec, SpecError, StageSpec};
pub use trace::{Service, StageTime, StageTrace};
