//! Starts the threads of a pipeline described by a `PipelineSpec`, joined by bounded
//! channels. The runtime knows stages only through the `Stage` trait and a registry that
//! maps a kind name to a constructor; it knows nothing of what flows through.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use super::channel::{Inlet, Keyed, Outlet};
use super::metrics::StageMetrics;
use super::spec::{PipelineSpec, SpecError};

/// A stage: what its workers do with each item.
pub trait Stage<T: Keyed>: Send + Sync + 'static {
    /// Handles one item, sending zero or more items on.
    fn process(&self, item: T, out: &Outlet<T>);

    /// One worker's loop. The default takes items one at a time and times `process`;
    /// a stage that batches (the engine) drives its inlet itself.
    fn run(&self, inlet: Inlet<T>, out: Outlet<T>) {
        while let Some(item) = inlet.recv() {
            let service = inlet.begin_service(&item);
            self.process(item, &out);
            inlet.end_service(service);
        }
    }
}

/// What a stage kind consumes and produces, by label, so the wiring can be checked before
/// anything starts ("tokenize" must follow something that produces prompts).
#[derive(Debug, Clone, Copy)]
pub struct StageShape {
    pub input: &'static str,
    pub output: &'static str,
    /// Items with the same key must reach the same worker, in order.
    pub ordered: bool,
}

pub type Constructor<T> = Box<dyn Fn() -> Result<Arc<dyn Stage<T>>, String>>;

/// Kind name → shape and constructor.
pub struct Registry<T> {
    kinds: HashMap<&'static str, (StageShape, Constructor<T>)>,
    sources: HashMap<&'static str, &'static str>,
}

impl<T: Send + Keyed + 'static> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + Keyed + 'static> Registry<T> {
    pub fn new() -> Self {
        Registry { kinds: HashMap::new(), sources: HashMap::new() }
    }

    pub fn stage(&mut self, kind: &'static str, shape: StageShape, make: Constructor<T>) -> &mut Self {
        self.kinds.insert(kind, (shape, make));
        self
    }

    /// A source and the label of what it produces.
    pub fn source(&mut self, name: &'static str, output: &'static str) -> &mut Self {
        self.sources.insert(name, output);
        self
    }
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
        let Some(&source_output) = registry.sources.get(spec.source.as_str()) else {
            return Err(SpecError(format!("{}: source {:?} is not available here", spec.origin, spec.source)));
        };
        // Check kinds and the chain of labels first: nothing starts on a wrong file.
        let mut shapes = Vec::new();
        let mut previous = (source_output, format!("source {:?}", spec.source));
        for s in &spec.stages {
            let (shape, _) = registry.kinds.get(s.kind.as_str()).ok_or_else(|| {
                SpecError(format!("{}: kind {:?} is not available in this pipeline", spec.locate(s), s.kind))
            })?;
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

        let mut stages = Vec::new();
        for s in &spec.stages {
            let (_, make) = &registry.kinds[s.kind.as_str()];
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
            for w in 0..s.workers {
                let rx = rxs[w % rxs.len()].clone();
                let inlet = Inlet::new(rx, metrics[i].clone(), i);
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
        let shape = |i, o| StageShape { input: i, output: o, ordered: false };
        r.source("http", "a");
        r.stage("decode", shape("a", "b"), Box::new(|| Ok(Arc::new(Tag("decode")) as Arc<dyn Stage<Item>>)));
        r.stage("render", shape("b", "c"), Box::new(|| Ok(Arc::new(Tag("render")) as Arc<dyn Stage<Item>>)));
        r.stage(
            "stream",
            StageShape { input: "c", output: "nothing", ordered: true },
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
        let shape = |i, o| StageShape { input: i, output: o, ordered: false };
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
    fn a_pipeline_must_end_in_a_sink() {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let err = Pipeline::start(&spec(&["decode", "render"]), &registry(sink)).err().unwrap().0;
        assert!(err.contains("the last stage must deliver results"), "{err}");
    }
}
