//! Tensor parallelism's processes. A node's first process starts the node's other ranks
//! (this binary again, with the same arguments and `config::RANK_VAR` set) and watches
//! them; every rank joins the c10d group; rank 0 then serves (HTTP, pipeline, scheduler,
//! sampling) and sends each step to the others, which run their shard of it
//! (`model::tp::follow`) and serve nothing.
//!
//! A rank that exits while the server runs takes the server down: rank 0 logs which rank
//! ended and how, breaks the group off (every collective then fails at once, so the step
//! in progress and any later one fail their requests with an error), gives the answers
//! `FAIL_GRACE` to go out, and exits 1. A rank that cannot reach the others errs within the
//! group's timeout; the others die with the process that started them (PR_SET_PDEATHSIG).

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::config::{PORT_VAR, Parallel, RANK_VAR, ServeConfig};
use crate::dist::{Group, GroupSpec, Store};
use crate::model::tp::Shard;
use crate::model::{self, LoadOptions};

/// Bounds joining the group and every collective of a step.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long open requests get to receive their error before the process exits.
const FAIL_GRACE: Duration = Duration::from_millis(1500);

static GROUP: OnceLock<Arc<Group>> = OnceLock::new();
static STATS: OnceLock<Arc<model::tp::TpStats>> = OnceLock::new();
static STOPPING: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);

/// A rank failed: says so, fails every collective from now on, and exits 1 shortly.
pub fn fail(why: String) {
    if STOPPING.load(Ordering::SeqCst) || FAILED.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::error!("{why}: stopping; requests in flight are answered with an error");
    if let Some(g) = GROUP.get() {
        g.break_off(&format!("tensor parallelism stopped: {why}"));
    }
    std::thread::spawn(|| {
        std::thread::sleep(FAIL_GRACE);
        tracing::error!("exiting after a tensor-parallel rank failed");
        // SAFETY: _exit(2) only ends the process (no destructor waits on a busy thread).
        unsafe { libc::_exit(1) }
    });
}

/// Starts this node's other ranks when this process is the node's first, and joins the
/// group. None without tensor parallelism.
pub fn launch(cfg: &ServeConfig) -> Result<Option<Shard>> {
    let p = &cfg.parallel;
    if p.size == 1 {
        return Ok(None);
    }
    model::tp::check(&cfg.location, p.size).map_err(anyhow::Error::msg)?;
    let mut spec = GroupSpec {
        master_addr: p.master_addr.clone(),
        // Rank 0 without --master-port: the store takes a free port, then tells the others.
        master_port: p.master_port.unwrap_or(0),
        rank: p.rank,
        world: p.size,
        timeout: TIMEOUT,
        bind_addr: p.bind_addr.clone(),
        ifname: p.ifname.clone(),
    };
    let store = Store::open(&spec).map_err(|e| anyhow!("rank {}: {e}", p.rank))?;
    spec.master_port = store.port();
    if p.starts_others() {
        start_ranks(p, spec.master_port)?;
    }
    tracing::info!("tensor parallelism: rank {} of {} joining the group at {}:{}", p.rank, p.size, p.master_addr, spec.master_port);
    let group = Arc::new(Group::join_through(&store, &spec).map_err(|e| anyhow!("rank {}: {e}", p.rank))?);
    let _ = GROUP.set(group.clone());
    let shard = Shard::new(group);
    let _ = STATS.set(shard.stats.clone());
    Ok(Some(shard))
}

/// Starts ranks `p.rank + 1 ..` of this node on a thread that then watches them (the
/// thread lives as long as the process: their parent-death signal follows it).
fn start_ranks(p: &Parallel, port: u16) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program to start the other ranks")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let ranks: Vec<usize> = (p.rank + 1..p.rank + p.per_node).collect();
    let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
    std::thread::Builder::new()
        .name("tp-ranks".into())
        .spawn(move || {
            let mut children: Vec<(usize, Child)> = Vec::new();
            for r in ranks {
                let mut cmd = Command::new(&exe);
                cmd.args(&args).env(RANK_VAR, r.to_string()).env(PORT_VAR, port.to_string());
                // SAFETY: prctl only sets a flag of the new process, before exec.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                match cmd.spawn() {
                    Ok(child) => {
                        tracing::info!("tensor parallelism: started rank {r} (pid {})", child.id());
                        children.push((r, child));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(anyhow!("starting tensor-parallel rank {r}: {e}")));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(()));
            watch(children);
        })
        .context("starting the thread that watches the other ranks")?;
    rx.recv().map_err(|_| anyhow!("the thread starting the other ranks ended"))?
}

/// Waits for the first child to exit; then the server stops (unless it is stopping anyway).
fn watch(mut children: Vec<(usize, Child)>) {
    loop {
        for (r, child) in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                if STOPPING.load(Ordering::SeqCst) {
                    return;
                }
                fail(format!("tensor-parallel rank {r} (pid {}) exited ({status})", child.id()));
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rank 0, at a clean stop: tells the others to end.
pub fn stop_ranks() {
    if STOPPING.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Some(g) = GROUP.get() {
        if !g.is_broken() {
            model::tp::stop(g);
        }
        if let Some((steps, mean, share)) = STATS.get().map(|s| s.summary()) {
            tracing::info!(
                "tensor parallelism: {steps} steps, {:.2} ms per forward pass on rank 0, {:.1}% of it in collectives \
                 (step plan broadcast, all-reduces, logits all-gather)",
                mean.as_secs_f64() * 1e3,
                share * 100.0
            );
        }
    }
}

/// A rank other than 0: joins, loads its shard, and runs the steps rank 0 sends until it
/// says stop. Never serves.
pub fn follow(cfg: &ServeConfig) -> Result<()> {
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t as i32);
    }
    let shard = launch(cfg)?.expect("a follower is tensor-parallel");
    let rank = shard.rank;
    let opts = LoadOptions {
        device: cfg.device,
        dtype: &cfg.dtype,
        max_model_len: cfg.max_model_len,
        quantization: cfg.quantization,
        shard: Some(shard),
    };
    let location = cfg.location.clone();
    let loaded = model::on_passing_thread(|| model::load(location, &opts)).map_err(|e| anyhow!("rank {rank}: {e}"))?;
    let (h, kvh) = loaded.decoder.heads();
    tracing::info!("rank {rank}: shard loaded ({h} attention heads, {kvh} KV heads)");
    match model::tp::follow(&loaded.decoder) {
        Ok(()) => {
            tracing::info!("rank {rank}: stopped");
            Ok(())
        }
        Err(e) => bail!("tensor-parallel rank {rank}: {e}"),
    }
}
