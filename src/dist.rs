//! Collectives between processes, over libtorch's c10d (a Gloo process group for CPU
//! tensors, joined through c10d's TCPStore): what tensor parallelism runs on. The C++ side
//! is kernels/dist.cpp; this wraps it in a `Group` whose calls return errors instead of
//! throwing.
//!
//! Besides the collectives, a group carries rank 0's messages to the others
//! (`send_message` / `recv_message`: a length, then the bytes, both broadcast) and a flag
//! that, once set (`break_off`: a rank has exited), fails every later call at once.

use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tch::{Kind, Tensor};

unsafe extern "C" {
    fn sluice_dist_available() -> i32;
    fn sluice_dist_store(
        master_host: *const c_char,
        port: i32,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        out: *mut *mut c_void,
        port_out: *mut i32,
    ) -> *const c_char;
    fn sluice_dist_store_free(store: *mut c_void);
    fn sluice_dist_init(
        store: *mut c_void,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        bind_host: *const c_char,
        ifname: *const c_char,
        out: *mut *mut c_void,
    ) -> *const c_char;
    fn sluice_dist_all_reduce(g: *mut c_void, t: *mut c_void) -> *const c_char;
    fn sluice_dist_broadcast(g: *mut c_void, t: *mut c_void, timeout_ms: i64) -> *const c_char;
    fn sluice_dist_broadcast_bytes(g: *mut c_void, data: *mut u8, len: i64, timeout_ms: i64) -> *const c_char;
    fn sluice_dist_all_gather(g: *mut c_void, out: *mut c_void, input: *mut c_void, dim: i64) -> *const c_char;
    fn sluice_dist_barrier(g: *mut c_void) -> *const c_char;
    fn sluice_dist_destroy(g: *mut c_void);
}

/// A collective that failed: a peer went away, a timeout, or bad input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DistError(pub String);

fn check(what: &str, err: *const c_char) -> Result<(), DistError> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated message owned by the calling thread.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    Err(DistError(format!("{what}: {msg}")))
}

/// Whether this build can make process groups (it was built with gloo's headers).
pub fn available() -> bool {
    // SAFETY: reads a constant.
    unsafe { sluice_dist_available() == 1 }
}

/// Where and how to join a group.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The address rank 0's store listens on (and the others connect to).
    pub master_addr: String,
    /// Its port; 0 on rank 0: a free one (`Store::port` says which).
    pub master_port: u16,
    pub rank: usize,
    pub world: usize,
    /// Bounds the rendezvous and every collective not given its own limit.
    pub timeout: Duration,
    /// The address this process's transport binds to; None: the interface `ifname`, else
    /// the address this machine's hostname resolves to.
    pub bind_addr: Option<String>,
    /// A network interface to bind to (torch's `GLOO_SOCKET_IFNAME`).
    pub ifname: Option<String>,
}

/// One process's membership of a group. Calls may come from several threads; those that
/// must not interleave with another thread's take `turn()` first.
pub struct Group {
    ptr: *mut c_void,
    pub rank: usize,
    pub world: usize,
    broken: AtomicBool,
    why: Mutex<String>,
    turn: Mutex<()>,
}

// SAFETY: c10d's process groups are made to be called from several threads; the handle is
// only freed in Drop.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

fn c_string(s: &str) -> Result<CString, DistError> {
    CString::new(s).map_err(|_| DistError(format!("{s:?} holds a NUL byte")))
}

/// The group's rendezvous store (c10d's TCPStore): served by rank 0, reached by the others.
pub struct Store {
    ptr: *mut c_void,
    port: u16,
}

// SAFETY: c10d's TCPStore serializes its own calls; the handle is only freed in Drop.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Rank 0 starts serving the store (on a free port when `spec.master_port` is 0); the
    /// others connect to it (within `spec.timeout`).
    pub fn open(spec: &GroupSpec) -> Result<Store, DistError> {
        let host = c_string(&spec.master_addr)?;
        let (mut ptr, mut port): (*mut c_void, i32) = (std::ptr::null_mut(), 0);
        // SAFETY: a NUL-terminated string alive for the call; outputs written on success.
        let err = unsafe {
            sluice_dist_store(
                host.as_ptr(),
                spec.master_port as i32,
                spec.rank as i32,
                spec.world as i32,
                spec.timeout.as_millis() as i64,
                &mut ptr,
                &mut port,
            )
        };
        check("the rendezvous store", err)?;
        Ok(Store { ptr, port: port as u16 })
    }

    /// The port the store listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: made by sluice_dist_store, freed once (the group keeps its own reference).
        unsafe { sluice_dist_store_free(self.ptr) }
    }
}

impl Group {
    /// Joins the group: returns once every rank has joined, or errs after `spec.timeout`.
    pub fn join(spec: &GroupSpec) -> Result<Group, DistError> {
        Self::join_through(&Store::open(spec)?, spec)
    }

    /// `join` through a store already open.
    pub fn join_through(store: &Store, spec: &GroupSpec) -> Result<Group, DistError> {
        let bind = c_string(spec.bind_addr.as_deref().unwrap_or(""))?;
        let ifname = c_string(spec.ifname.as_deref().unwrap_or(""))?;
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: a live store and NUL-terminated strings for the call; `ptr` is written on
        // success.
        let err = unsafe {
            sluice_dist_init(
                store.ptr,
                spec.rank as i32,
                spec.world as i32,
                spec.timeout.as_millis() as i64,
                bind.as_ptr(),
                ifname.as_ptr(),
                &mut ptr,
            )
        };
        check("joining the process group", err)?;
        Ok(Group {
            ptr,
            rank: spec.rank,
            world: spec.world,
            broken: AtomicBool::new(false),
            why: Mutex::new(String::new()),
            turn: Mutex::new(()),
        })
    }

    /// From now on every call fails at once with `why`.
    pub fn break_off(&self, why: &str) {
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why.to_string();
        self.broken.store(true, Ordering::SeqCst);
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    fn live(&self) -> Result<(), DistError> {
        if self.is_broken() {
            return Err(DistError(self.why.lock().unwrap_or_else(|e| e.into_inner()).clone()));
        }
        Ok(())
    }

    /// Held by a thread for a sequence of collectives that must not interleave with
    /// another thread's (rank 0's step against its idle heartbeat).
    pub fn turn(&self) -> MutexGuard<'_, ()> {
        self.turn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `turn()` when no other thread holds it.
    pub fn try_turn(&self) -> Option<MutexGuard<'_, ()>> {
        self.turn.try_lock().ok()
    }

    /// Sums `t` (contiguous, on the CPU) over the ranks, in place on every rank.
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), DistError> {
        self.live()?;
        if self.world == 1 {
            return Ok(());
        }
        assert!(t.is_contiguous(), "all-reduce takes a contiguous tensor");
        // SAFETY: a live tensor for the call.
        check("all-reduce", unsafe { sluice_dist_all_reduce(self.ptr, t.as_mut_ptr().cast()) })
    }

    /// Rank 0's `t` into every rank's `t` (contiguous, same shape and dtype everywhere).
    pub fn broadcast(&self, t: &mut Tensor, timeout: Option<Duration>) -> Result<(), DistError> {
        self.live()?;
        if self.world == 1 {
            return Ok(());
        }
        assert!(t.is_contiguous(), "broadcast takes a contiguous tensor");
        let ms = timeout.map_or(0, |d| d.as_millis() as i64);
        // SAFETY: a live tensor for the call.
        check("broadcast", unsafe { sluice_dist_broadcast(self.ptr, t.as_mut_ptr().cast(), ms) })
    }

    /// Rank 0's bytes into every rank's `buf` (the same length everywhere).
    pub fn broadcast_bytes(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<(), DistError> {
        self.live()?;
        if self.world == 1 {
            return Ok(());
        }
        let ms = timeout.map_or(0, |d| d.as_millis() as i64);
        // SAFETY: the buffer outlives the call and is `len` bytes long.
        check("broadcast", unsafe { sluice_dist_broadcast_bytes(self.ptr, buf.as_mut_ptr(), buf.len() as i64, ms) })
    }

    /// Every rank's `t` (one shape on all ranks) joined along `dim` in rank order.
    pub fn all_gather(&self, t: &Tensor, dim: i64) -> Result<Tensor, DistError> {
        self.live()?;
        if self.world == 1 {
            return Ok(t.shallow_clone());
        }
        let mut input = t.contiguous();
        let mut out = Tensor::empty([0], (Kind::Float, tch::Device::Cpu));
        // SAFETY: live tensors for the call; `out` is replaced by the joined tensor.
        check("all-gather", unsafe {
            sluice_dist_all_gather(self.ptr, out.as_mut_ptr().cast(), input.as_mut_ptr().cast(), dim)
        })?;
        Ok(out)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        self.live()?;
        if self.world == 1 {
            return Ok(());
        }
        // SAFETY: the handle is live.
        check("barrier", unsafe { sluice_dist_barrier(self.ptr) })
    }

    /// Rank 0: sends `msg` to every other rank (which take it with `recv_message`), within
    /// `timeout` (None: the group's).
    pub fn send_message(&self, msg: &[u8], timeout: Option<Duration>) -> Result<(), DistError> {
        let mut len = (msg.len() as u64).to_le_bytes();
        self.broadcast_bytes(&mut len, timeout)?;
        let mut body = msg.to_vec();
        self.broadcast_bytes(&mut body, timeout)
    }

    /// The others: rank 0's next message, waiting for it up to `wait` (the body then
    /// follows within the group's timeout).
    pub fn recv_message(&self, wait: Duration) -> Result<Vec<u8>, DistError> {
        let mut len = [0u8; 8];
        self.broadcast_bytes(&mut len, Some(wait))?;
        let mut body = vec![0u8; u64::from_le_bytes(len) as usize];
        self.broadcast_bytes(&mut body, None)?;
        Ok(body)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: made by sluice_dist_init, freed once.
        unsafe { sluice_dist_destroy(self.ptr) }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    /// The collectives are part of what the tests cover: a build without them fails here.
    const NO_GLOO: &str = "this build has no Gloo (kernels/dist.cpp built without gloo's headers: run scripts/setup.sh)";

    /// Two ranks in one process (one thread each) over loopback: every collective gives
    /// what it should on both.
    #[test]
    fn two_ranks_over_loopback() {
        assert!(available(), "{NO_GLOO}");
        let spec = |rank, port| GroupSpec {
            master_addr: "127.0.0.1".into(),
            master_port: port,
            rank,
            world: 2,
            timeout: Duration::from_secs(30),
            bind_addr: Some("127.0.0.1".into()),
            ifname: None,
        };
        // Rank 0's store on a free port, which rank 1 is then given.
        let store = Store::open(&spec(0, 0)).unwrap();
        let port = store.port();
        assert_ne!(port, 0);
        let run = |rank: usize| {
            let g = if rank == 0 { Group::join_through(&store, &spec(0, port)).unwrap() } else { Group::join(&spec(1, port)).unwrap() };
            let r = rank as f64;
            let mut t = Tensor::from_slice(&[1.0f32 + r as f32, 10.0 * (r as f32 + 1.0)]);
            g.all_reduce_sum(&mut t).unwrap();
            let sum: Vec<f32> = Vec::try_from(&t).unwrap();
            let mut b = if rank == 0 { Tensor::from_slice(&[7i64, 8, 9]) } else { Tensor::zeros([3], (Kind::Int64, tch::Device::Cpu)) };
            g.broadcast(&mut b, None).unwrap();
            let b: Vec<i64> = Vec::try_from(&b).unwrap();
            let part = Tensor::full([2, 2], r + 1.0, (Kind::BFloat16, tch::Device::Cpu));
            let all = g.all_gather(&part, 1).unwrap();
            let msg = if rank == 0 {
                g.send_message(b"step plan", None).unwrap();
                b"step plan".to_vec()
            } else {
                g.recv_message(Duration::from_secs(30)).unwrap()
            };
            g.barrier().unwrap();
            (sum, b, all, msg)
        };
        let (a, b) = std::thread::scope(|s| {
            let h1 = s.spawn(|| run(1));
            let a = run(0);
            (a, h1.join().unwrap())
        });
        for (sum, bc, all, msg) in [a, b] {
            assert_eq!(sum, vec![3.0, 30.0]);
            assert_eq!(bc, vec![7, 8, 9]);
            assert_eq!(all.size(), vec![2, 4]);
            assert_eq!(all.kind(), Kind::BFloat16);
            let row: Vec<f32> = Vec::try_from(&all.get(0).to_kind(Kind::Float)).unwrap();
            assert_eq!(row, vec![1.0, 1.0, 2.0, 2.0]);
            assert_eq!(msg, b"step plan");
        }
    }

    /// A rank whose peer never comes errs within the timeout instead of hanging.
    #[test]
    fn a_missing_peer_is_an_error_not_a_hang() {
        assert!(available(), "{NO_GLOO}");
        let spec = GroupSpec {
            master_addr: "127.0.0.1".into(),
            master_port: 0,
            rank: 0,
            world: 2,
            timeout: Duration::from_millis(1500),
            bind_addr: Some("127.0.0.1".into()),
            ifname: None,
        };
        let t0 = std::time::Instant::now();
        let err = Group::join(&spec).err().expect("no second rank joined");
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        assert!(err.0.contains("joining the process group"), "{err}");
    }
}
