//! Starts the threads of a pipeline described by a `PipelineSpec`, joined by bounded
//! channels. The runtime knows stages only through the `Stage` trait and a registry that
//! maps a kind name to a constructor; it knows nothing of what flows through.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use super::channel::{Inlet, Keyed, Outlet};
use super::faults::Faults;
use super::metrics::StageMetrics;
use super::spec::{PipelineSpec, SpecError};

/// A stage: what its workers do with each item.
pub trait Stage<T: Keyed>: Send + Sync + 'static {
    /// Handles one item, sending zero or more items on.
    fn process(&self, item: T, out: &Outlet<T>);

    /// One worker's loop. The default takes items one at a time and times `process`,
    /// containing a panic to the item it happened on (`Inlet::contain`); a stage that
    /// batches (the engine) or keeps state drives its inlet itself.
    fn run(&self, inlet: Inlet<T>, out: Outlet<T>) {
        while let Some(item) = inlet.recv() {
            let service = inlet.begin_service(&item);
            inlet.contain(item, |item| self.process(item, &out));
            inlet.end_service(service);
        }
    }
}

/// What a stage kind consumes and produces, by label, so the wiring can be checked before
/// anything starts ("tokenize" must follow something that produces prompts), and how many
/// workers it can run on.
#[derive(Debug, Clone, Copy)]
pub struct StageShape {
    pub input: &'static str,
    pub output: &'static str,
    /// Items with the same key must reach the same worker, in order.
    pub ordered: bool,
    /// At most this many workers (a stage that owns a model: one); None: any number.
    pub max_workers: Option<usize>,
    /// Why `max_workers` holds, for the message when a file asks for more.
    pub why: &'static str,
}

impl StageShape {
    /// A stage taking `input` and giving `output`, on any number of workers, in any order.
    pub const fn new(input: &'static str, output: &'static str) -> Self {
        StageShape { input, output, ordered: false, max_workers: None, why: "" }
    }

    /// Items of one key go to one worker, in order.
    pub const fn ordered(self) -> Self {
        StageShape { ordered: true, ..self }
    }

    /// One worker only, for the reason given.
    pub const fn single(self, why: &'static str) -> Self {
        StageShape { max_workers: Some(1), why, ..self }
    }
}

pub type Constructor<T> = Box<dyn Fn() -> Result<Arc<dyn Stage<T>>, String>>;

/// The stage kinds a pipeline may name, with their shapes, and the sources that may feed
/// it: what a pipeline file is checked against, before anything is built (so before a
/// model loads).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// In the order they were added (the order messages list them in).
    kinds: Vec<(&'static str, StageShape)>,
    sources: Vec<(&'static str, &'static str)>,
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kind(&mut self, kind: &'static str, shape: StageShape) -> &mut Self {
        self.kinds.retain(|(k, _)| *k != kind);
        self.kinds.push((kind, shape));
        self
    }

    /// A source and the label of what it produces.
    pub fn source(&mut self, name: &'static str, output: &'static str) -> &mut Self {
        self.sources.retain(|(n, _)| *n != name);
        self.sources.push((name, output));
        self
    }

    fn shape(&self, kind: &str) -> Option<&StageShape> {
        self.kinds.iter().find(|(k, _)| *k == kind).map(|(_, s)| s)
    }

    /// Checks a pipeline file against the kinds and sources: every kind known, within its
    /// worker limit, each stage taking what the one before gives, the last delivering.
    /// Returns each stage's shape.
    pub fn check(&self, spec: &PipelineSpec) -> Result<Vec<StageShape>, SpecError> {
        let Some(&(_, source_output)) = self.sources.iter().find(|(n, _)| *n == spec.source) else {
            return Err(SpecError(format!("{}: source {:?} is not available here", spec.origin, spec.source)));
        };
        let mut shapes = Vec::new();
        let mut previous = (source_output, format!("source {:?}", spec.source));
        for s in &spec.stages {
            let shape = self.shape(&s.kind).ok_or_else(|| {
                let known: Vec<String> = self.kinds.iter().map(|(k, _)| format!("{k:?}")).collect();
                SpecError(format!("{}: {:?} is not one of {}", spec.locate_field(s, "kind"), s.kind, known.join(", ")))
            })?;
            if let Some(max) = shape.max_workers.filter(|&m| s.workers > m) {
                return Err(SpecError(format!(
                    "{}: {} is more than {:?} can run on ({max}): {}",
                    spec.locate_field(s, "workers"),
                    s.workers,
                    s.kind,
                    shape.why
                )));
            }
            if shape.input != previous.0 {
                return Err(SpecError(format!(
                    "{}: {:?} takes {} but follows {}, which produces {}",
                    spec.locate(s),
                    s.kind,
                    shape.input,
                    previous.1,
                    previous.0
                )));
            }
            previous = (shape.output, format!("stage {:?}", s.name));
            shapes.push(*shape);
        }
        if previous.0 != "nothing" {
            return Err(SpecError(format!(
                "{}: the last stage must deliver results (e.g. kind \"stream\"), but {} produces {}",
                spec.origin, previous.1, previous.0
            )));
        }
        Ok(shapes)
    }
}

/// A catalog with a constructor for each kind.
pub struct Registry<T> {
    catalog: Catalog,
    makers: HashMap<&'static str, Constructor<T>>,
}

impl<T: Send + Keyed + 'static> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + Keyed + 'static> Registry<T> {
    pub fn new() -> Self {
        Self::with_catalog(Catalog::new())
    }

    /// Constructors for a catalog's kinds are given next, with `make`.
    pub fn with_catalog(catalog: Catalog) -> Self {
        Registry { catalog, makers: HashMap::new() }
    }

    /// A kind with its shape and constructor.
    pub fn stage(&mut self, kind: &'static str, shape: StageShape, make: Constructor<T>) -> &mut Self {
        self.catalog.kind(kind, shape);
        self.makers.insert(kind, make);
        self
    }

    /// The constructor of a kind the catalog already has.
    pub fn make(&mut self, kind: &'static str, make: Constructor<T>) -> &mut Self {
        assert!(self.catalog.shape(kind).is_some(), "stage kind {kind:?} is not in the catalog");
        self.makers.insert(kind, make);
        self
    }

    /// A source and the label of what it produces.
    pub fn source(&mut self, name: &'static str, output: &'static str) -> &mut Self {
        self.catalog.source(name, output);
        self
    }
}

/// Checks that every stage a fault list names (`stage:NAME`) is in the pipeline file.
pub fn check_faults(spec: &PipelineSpec, faults: &Faults) -> Result<(), SpecError> {
    for place in faults.places() {
        if let Some(name) = place.strip_prefix("stage:") {
            if !spec.stages.iter().any(|s| s.name == name) {
                let names: Vec<&str> = spec.stages.iter().map(|s| s.name.as_str()).collect();
                return Err(SpecError(format!(
                    "SLUICE_FAULTS: {}: no stage is named {name:?}; the stages are {}",
                    spec.origin,
                    names.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// A running pipeline.
pub struct Pipeline<T> {
    entry: Outlet<T>,
    pub metrics: Vec<Arc<StageMetrics>>,
    handles: Vec<JoinHandle<()>>,
}

impl<T: Send + Keyed + 'static> Pipeline<T> {
    /// Checks the wiring and starts every stage's workers.
    pub fn start(spec: &PipelineSpec, registry: &Registry<T>) -> Result<Self, SpecError> {
        Self::start_with_faults(spec, registry, &Faults::none())
    }

    /// As `start`, with faults injected into the stages `faults` names (`stage:NAME`);
    /// a fault naming no stage of the file is refused.
    pub fn start_with_faults(spec: &PipelineSpec, registry: &Registry<T>, faults: &Faults) -> Result<Self, SpecError> {
        check_faults(spec, faults)?;
        // Check kinds and the chain of labels first: nothing starts on a wrong file.
        let shapes = registry.catalog.check(spec)?;
        let mut stages = Vec::new();
        for s in &spec.stages {
            let make = registry.makers.get(s.kind.as_str()).ok_or_else(|| {
                SpecError(format!("{}: kind {:?} has no constructor in this pipeline", spec.locate(s), s.kind))
            })?;
            let stage = make().map_err(|e| SpecError(format!("{}: {e}", spec.locate(s))))?;
            stages.push(stage);
        }

        // Channels: one per worker for ordered stages, one shared otherwise.
        let mut inputs: Vec<(Outlet<T>, Vec<crossbeam_channel::Receiver<_>>)> = Vec::new();
        for (s, shape) in spec.stages.iter().zip(&shapes) {
            let lanes = if shape.ordered { s.workers } else { 1 };
            let per_lane = if shape.ordered { s.queue.div_ceil(lanes) } else { s.queue };
            let (txs, rxs): (Vec<_>, Vec<_>) = (0..lanes).map(|_| crossbeam_channel::bounded(per_lane)).unzip();
            inputs.push((Outlet::new(txs), rxs));
        }

        let metrics: Vec<Arc<StageMetrics>> = spec.stages.iter().map(|s| Arc::new(StageMetrics::new(&s.name, &s.kind))).collect();
        let entry = inputs[0].0.clone();
        let mut handles = Vec::new();
        for (i, s) in spec.stages.iter().enumerate() {
            let out = inputs.get(i + 1).map(|(o, _)| o.clone()).unwrap_or_else(Outlet::terminal);
            let rxs = &inputs[i].1;
            let fault = faults.at(&format!("stage:{}", s.name));
            for w in 0..s.workers {
                let rx = rxs[w % rxs.len()].clone();
                let inlet = Inlet::new(rx, metrics[i].clone(), i, fault.clone());
                let (stage, out) = (stages[i].clone(), out.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("{}-{w}", s.name))
                    .spawn(move || stage.run(inlet, out))
                    .map_err(|e| SpecError(format!("{}: cannot start a worker: {e}", spec.locate(s))))?;
                handles.push(handle);
            }
        }
        Ok(Pipeline { entry, metrics, handles })
    }

    /// The stages' names in pipeline order: the slots of a `StageTrace`.
    pub fn stage_names(&self) -> Arc<[String]> {
        self.metrics.iter().map(|m| m.name.clone()).collect()
    }

    /// Where sources put new items.
    pub fn entry(&self) -> &Outlet<T> {
        &self.entry
    }

    /// Closes the entry and waits for every stage to drain and stop.
    pub fn shutdown(self) {
        drop(self.entry);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug)]
    struct Item(u64, Vec<&'static str>);

    impl Keyed for Item {
        fn key(&self) -> u64 {
            self.0
        }
    }

    struct Tag(&'static str);
    impl Stage<Item> for Tag {
        fn process(&self, mut item: Item, out: &Outlet<Item>) {
            item.1.push(self.0);
            out.send(item).unwrap();
        }
    }

    struct Collect(Arc<Mutex<Vec<Item>>>);
    impl Stage<Item> for Collect {
        fn process(&self, item: Item, _: &Outlet<Item>) {
            self.0.lock().unwrap().push(item);
        }
    }

    fn registry(sink: Arc<Mutex<Vec<Item>>>) -> Registry<Item> {
        let mut r = Registry::new();
        let shape = StageShape::new;
        r.source("http", "a");
        r.stage("decode", shape("a", "b"), Box::new(|| Ok(Arc::new(Tag("decode")) as Arc<dyn Stage<Item>>)));
        r.stage("render", shape("b", "c"), Box::new(|| Ok(Arc::new(Tag("render")) as Arc<dyn Stage<Item>>)));
        r.stage(
            "stream",
            StageShape::new("c", "nothing").ordered(),
            Box::new(move || Ok(Arc::new(Collect(sink.clone())) as Arc<dyn Stage<Item>>)),
        );
        r
    }

    fn spec(kinds: &[&str]) -> PipelineSpec {
        let mut text = String::from("name = \"t\"\nsource = \"http\"\n");
        for k in kinds {
            text.push_str(&format!("[[stage]]\nkind = \"{k}\"\nworkers = 2\nqueue = 4\n"));
        }
        PipelineSpec::parse(&text, "t.toml").unwrap()
    }

    #[test]
    fn items_flow_through_every_stage_and_are_timed() {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let p = Pipeline::start(&spec(&["decode", "render", "stream"]), &registry(sink.clone())).unwrap();
        for i in 0..100 {
            p.entry().send(Item(i, vec![])).unwrap();
        }
        let metrics = p.metrics.clone();
        p.shutdown();
        let got = sink.lock().unwrap();
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|i| i.1 == ["decode", "render"]));
        assert!(metrics.iter().all(|m| m.service.count() == 100 && m.queue.count() == 100));
    }

    /// An item that carries a stage trace.
    struct Traced(u64, Arc<crate::pipeline::StageTrace>);

    impl Keyed for Traced {
        fn key(&self) -> u64 {
            self.0
        }
        fn trace(&self) -> Option<&Arc<crate::pipeline::StageTrace>> {
            Some(&self.1)
        }
    }

    struct Pass;
    impl Stage<Traced> for Pass {
        fn process(&self, item: Traced, out: &Outlet<Traced>) {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let _ = out.send(item);
        }
    }

    #[test]
    fn traced_items_get_every_stage_time() {
        let mut r: Registry<Traced> = Registry::new();
        let shape = StageShape::new;
        r.source("http", "a");
        r.stage("decode", shape("a", "b"), Box::new(|| Ok(Arc::new(Pass) as Arc<dyn Stage<Traced>>)));
        r.stage("stream", shape("b", "nothing"), Box::new(|| Ok(Arc::new(Pass) as Arc<dyn Stage<Traced>>)));
        let p = Pipeline::start(&spec(&["decode", "stream"]), &r).unwrap();
        let trace = Arc::new(crate::pipeline::StageTrace::new(p.stage_names()));
        for i in 0..3 {
            p.entry().send(Traced(i, trace.clone())).unwrap();
        }
        p.shutdown();
        let snap = trace.snapshot(std::time::Instant::now());
        assert_eq!(snap.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["decode", "stream"]);
        for (_, t) in snap {
            assert_eq!(t.items, 3);
            assert!(t.service >= std::time::Duration::from_millis(6), "{t:?}");
        }
    }

    #[test]
    fn miswired_order_is_rejected_before_start() {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let err = Pipeline::start(&spec(&["render", "decode", "stream"]), &registry(sink)).err().unwrap().0;
        assert!(err.contains("stage 1 (\"render\"): \"render\" takes b but follows source \"http\", which produces a"), "{err}");
    }

    #[test]
    fn unknown_kinds_are_refused_naming_every_kind() {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let err = Pipeline::start(&spec(&["decode", "rendr", "stream"]), &registry(sink)).err().unwrap().0;
        assert!(err.contains("t.toml:8: stage 2 (\"rendr\"): kind: \"rendr\" is not one of \"decode\", \"render\", \"stream\""), "{err}");
    }

    #[test]
    fn a_single_worker_kind_refuses_more() {
        let mut c = Catalog::new();
        c.source("http", "a").kind("engine", StageShape::new("a", "nothing").single("it owns the model"));
        // spec() gives every stage two workers.
        let err = c.check(&spec(&["engine"])).unwrap_err().0;
        assert!(err.contains("t.toml:5: stage 1 (\"engine\"): workers: 2 is more than \"engine\" can run on (1): it owns the model"), "{err}");
        let one = PipelineSpec::parse("name = \"t\"\nsource = \"http\"\n[[stage]]\nkind = \"engine\"\nworkers = 1\nqueue = 4\n", "t.toml").unwrap();
        assert!(c.check(&one).is_ok());
    }

    #[test]
    fn a_pipeline_must_end_in_a_sink() {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let err = Pipeline::start(&spec(&["decode", "render"]), &registry(sink)).err().unwrap().0;
        assert!(err.contains("the last stage must deliver results"), "{err}");
    }
}
