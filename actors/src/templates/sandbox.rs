//! Template rendering in worker processes, so that no template can take the gateway down.
//!
//! minijinja bounds instructions (fuel), recursion and what a template writes, but not the
//! values it builds on the way: `{% set a = "x" * 100000000 %}{% set b = a ~ a %}…` doubles a
//! string per instruction, and an allocation that fails aborts a Rust process. So the gateway
//! runs template code in child processes of its own binary (`flowgate render-worker`), each
//! with an address-space limit (`RLIMIT_AS`) and a wall-clock deadline enforced from here. A
//! template that needs more memory kills its worker (the allocation fails, the worker aborts);
//! one that runs too long is killed; either way the request gets a 400 naming the limit, a new
//! worker takes the dead one's place, and the gateway's own memory never grows.
//!
//! Workers are started on first use, reused (one job at a time each), and retire themselves
//! after a job that left them large. Jobs and answers are length-prefixed JSON on the worker's
//! stdin and stdout.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Limits, TemplateError, TemplateErrorKind};
use crate::wire::Message;

/// A worker retires after a job that left its resident memory above this.
const RETIRE_ABOVE_BYTES: u64 = 64 * 1024 * 1024;

/// Largest job or answer frame a worker or the gateway reads.
const MAX_FRAME_BYTES: usize = 1 << 30;
/// What a worker writes once it is ready for jobs.
const READY: u8 = b'R';
/// How long a new worker may take to start (not counted in a render's time limit).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the gateway starts its render workers.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// The program to run: the gateway's own binary.
    pub program: PathBuf,
    /// Its arguments (the worker subcommand); `--memory-bytes N` is appended.
    pub args: Vec<String>,
    /// Workers at most; a request waits for a free one up to the time limit.
    pub workers: usize,
    /// Address-space limit of each worker.
    pub memory_bytes: u64,
}

/// The pool of render workers.
pub struct Sandbox {
    settings: SandboxSettings,
    pool: Mutex<Pool>,
    freed: Condvar,
}

struct Pool {
    idle: Vec<Worker>,
    /// Workers alive, idle or busy.
    live: usize,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

/// What a worker is asked to do: [`super::render`] or [`super::check_without_input`].
#[derive(Serialize)]
pub enum Job<'a> {
    Render {
        messages: &'a [Message],
        input: &'a Map<String, Value>,
        require_variables: bool,
    },
    Check {
        messages: &'a [Message],
    },
}

/// A [`Job`] as the worker reads it.
#[derive(Deserialize)]
enum OwnedJob {
    Render {
        messages: Vec<Message>,
        input: Map<String, Value>,
        require_variables: bool,
    },
    Check {
        messages: Vec<Message>,
    },
}

#[derive(Serialize)]
struct Envelope<'a> {
    job: Job<'a>,
    limits: &'a Limits,
}

#[derive(Deserialize)]
struct OwnedEnvelope {
    job: OwnedJob,
    limits: Limits,
}

/// The rendered messages (`None` for a check).
type Outcome = Result<Option<Vec<Message>>, TemplateError>;

#[derive(Serialize, Deserialize)]
struct Reply {
    result: Outcome,
    /// The worker exits after this answer (it grew large).
    retiring: bool,
}

/// How a job failed on the gateway's side.
enum CallError {
    /// No answer within the time limit.
    Timeout,
    /// The worker ended without answering: it hit its memory limit.
    Died,
    /// The worker did not take the job (it had ended already, or died reading it).
    Gone,
    /// The worker answered something that is not a reply.
    Garbled(String),
}

impl Sandbox {
    pub fn new(settings: SandboxSettings) -> Sandbox {
        Sandbox {
            settings,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                live: 0,
            }),
            freed: Condvar::new(),
        }
    }

    /// Runs `job` in a worker, within `limits` (fuel, output, recursion in the worker; memory
    /// and time around it). Returns the rendered messages of a `Render` job. Blocks the
    /// calling thread: call it off the async workers.
    pub fn run(&self, job: Job<'_>, limits: &Limits) -> Result<Vec<Message>, TemplateError> {
        // How long to wait for a free worker: as long as a render may take.
        let wait_until = Instant::now() + limits.timeout;
        let job = serde_json::to_vec(&Envelope { job, limits }).map_err(|e| {
            whole(
                TemplateErrorKind::Render,
                format!("cannot send the job: {e}"),
            )
        })?;
        // A reused worker may have gone away while idle: one more try on a fresh one.
        for fresh_try in [false, true] {
            let (mut worker, reused) = self.checkout(wait_until)?;
            match worker.call(&job, Instant::now() + limits.timeout) {
                Ok(reply) => {
                    if reply.retiring {
                        self.discard(worker);
                    } else {
                        self.checkin(worker);
                    }
                    return reply.result.map(Option::unwrap_or_default);
                }
                Err(CallError::Timeout) => {
                    self.discard(worker);
                    tracing::warn!(
                        limit_seconds = limits.timeout.as_secs_f64(),
                        "a template hit its time limit; its render worker was killed"
                    );
                    return Err(whole(
                        TemplateErrorKind::TimeLimit,
                        format!(
                            "rendering took longer than the limit of {} s",
                            limits.timeout.as_secs_f64()
                        ),
                    ));
                }
                // It was gone before it could take the job (killed while idle).
                Err(CallError::Gone) if reused && !fresh_try => {
                    self.discard(worker);
                }
                Err(CallError::Died | CallError::Gone) => {
                    let status = worker.reap();
                    self.release_slot();
                    tracing::warn!(
                        limit_bytes = self.settings.memory_bytes,
                        status = %status,
                        "a template hit its memory limit; its render worker died"
                    );
                    return Err(whole(
                        TemplateErrorKind::MemoryLimit,
                        format!(
                            "rendering needs more than the memory limit of {} MB",
                            self.settings.memory_bytes / (1024 * 1024)
                        ),
                    ));
                }
                Err(CallError::Garbled(e)) => {
                    self.discard(worker);
                    return Err(whole(
                        TemplateErrorKind::Render,
                        format!("the render worker answered badly: {e}"),
                    ));
                }
            }
        }
        Err(whole(
            TemplateErrorKind::Render,
            "the render workers keep exiting",
        ))
    }

    /// An idle worker, or a new one when fewer than `workers` live; else waits for one until
    /// `deadline`. Also says whether the worker was used before.
    fn checkout(&self, deadline: Instant) -> Result<(Worker, bool), TemplateError> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(worker) = pool.idle.pop() {
                return Ok((worker, true));
            }
            if pool.live < self.settings.workers.max(1) {
                pool.live += 1;
                drop(pool);
                return match self.spawn() {
                    Ok(worker) => Ok((worker, false)),
                    Err(e) => {
                        self.release_slot();
                        tracing::error!(error = %e, "cannot start a render worker");
                        Err(whole(
                            TemplateErrorKind::Busy,
                            format!("cannot start a render worker: {e}"),
                        ))
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(whole(
                    TemplateErrorKind::Busy,
                    "every template render worker is busy: try again",
                ));
            }
            pool = self
                .freed
                .wait_timeout(pool, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn checkin(&self, worker: Worker) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.idle.push(worker);
        drop(pool);
        self.freed.notify_one();
    }

    /// Kills a worker and frees its place.
    fn discard(&self, mut worker: Worker) {
        let _ = worker.child.kill();
        worker.reap();
        self.release_slot();
    }

    fn release_slot(&self) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.live = pool.live.saturating_sub(1);
        drop(pool);
        self.freed.notify_one();
    }

    fn spawn(&self) -> io::Result<Worker> {
        let mut child = Command::new(&self.settings.program)
            .args(&self.settings.args)
            .arg("--memory-bytes")
            .arg(self.settings.memory_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // A worker that aborts prints "memory allocation of … failed"; the gateway logs
            // the failure itself.
            .stderr(Stdio::null())
            // Nothing of the gateway's environment (provider keys) is the worker's business.
            .env_clear()
            // mimalloc would reserve a 1 GiB arena up front, more than the limit allows.
            .env("MIMALLOC_ARENA_RESERVE", "0")
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("the worker has no pipes"));
        };
        let mut worker = Worker {
            child,
            stdin,
            stdout,
        };
        // Starting a process is not rendering: the time limit starts once the worker is up.
        let mut ready = [0u8; 1];
        match worker.read_exact_by(&mut ready, Instant::now() + STARTUP_TIMEOUT) {
            Ok(()) if ready[0] == READY => Ok(worker),
            _ => {
                let _ = worker.child.kill();
                worker.reap();
                Err(io::Error::other("the render worker did not start"))
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let pool = self.pool.get_mut().unwrap_or_else(|p| p.into_inner());
        for mut worker in pool.idle.drain(..) {
            let _ = worker.child.kill();
            worker.reap();
        }
    }
}

fn whole(kind: TemplateErrorKind, message: impl Into<String>) -> TemplateError {
    TemplateError::new(kind, message)
}

impl Worker {
    fn call(&mut self, job: &[u8], deadline: Instant) -> Result<Reply, CallError> {
        let len =
            u32::try_from(job.len()).map_err(|_| CallError::Garbled("job too large".into()))?;
        if self.stdin.write_all(&len.to_le_bytes()).is_err()
            || self.stdin.write_all(job).is_err()
            || self.stdin.flush().is_err()
        {
            return Err(CallError::Gone);
        }
        let mut head = [0u8; 4];
        self.read_exact_by(&mut head, deadline)?;
        let len = u32::from_le_bytes(head) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(CallError::Garbled(format!("a frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.read_exact_by(&mut body, deadline)?;
        serde_json::from_slice(&body).map_err(|e| CallError::Garbled(e.to_string()))
    }

    /// Fills `buf` from the worker's stdout, waiting no later than `deadline`.
    fn read_exact_by(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), CallError> {
        let mut filled = 0;
        while filled < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !readable_within(&self.stdout, left) {
                return Err(CallError::Timeout);
            }
            match self.stdout.read(&mut buf[filled..]) {
                Ok(0) => return Err(CallError::Died),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(CallError::Died),
            }
        }
        Ok(())
    }

    /// Waits for the process to end; what it ended with.
    fn reap(&mut self) -> String {
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        }
    }
}

/// Whether `pipe` has data (or end of file) within `timeout`.
fn readable_within(pipe: &ChildStdout, timeout: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut fds, 1, millis) };
        if ready >= 0 {
            return ready > 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // Let the read report what is wrong.
            return true;
        }
    }
}

/// The worker's side: limits its own address space, then answers jobs from stdin until it
/// closes. Returns when the gateway is gone or the worker retires.
pub fn serve_worker(memory_bytes: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: memory_bytes as libc::rlim_t,
        rlim_max: memory_bytes as libc::rlim_t,
    };
    // SAFETY: a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    stdout.write_all(&[READY])?;
    stdout.flush()?;
    loop {
        let mut head = [0u8; 4];
        match stdin.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(head) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(io::Error::other("job frame too large"));
        }
        let mut body = vec![0u8; len];
        stdin.read_exact(&mut body)?;
        let result: Outcome = match serde_json::from_slice::<OwnedEnvelope>(&body) {
            Ok(OwnedEnvelope { job, limits }) => {
                drop(body);
                match job {
                    OwnedJob::Render {
                        messages,
                        input,
                        require_variables,
                    } => super::render(&messages, &input, &limits, require_variables).map(Some),
                    OwnedJob::Check { messages } => {
                        super::check_without_input(&messages, &limits).map(|()| None)
                    }
                }
            }
            Err(e) => Err(whole(
                TemplateErrorKind::Render,
                format!("the render worker cannot read its job: {e}"),
            )),
        };
        let retiring = resident_bytes().is_some_and(|rss| rss > RETIRE_ABOVE_BYTES);
        let reply = serde_json::to_vec(&Reply { result, retiring }).map_err(io::Error::other)?;
        let len = u32::try_from(reply.len()).map_err(io::Error::other)?;
        stdout.write_all(&len.to_le_bytes())?;
        stdout.write_all(&reply)?;
        stdout.flush()?;
        if retiring {
            return Ok(());
        }
    }
}

/// This process's resident memory, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
