//! libtorch's own OpenMP team, borrowed for our elementwise kernels: libgomp's entry points
//! (`GOMP_parallel`, `omp_get_thread_num`, `omp_get_num_threads`) looked up with `dlsym` in the
//! process's global scope, where libtorch has loaded its libgomp. Our kernels then run in
//! parallel like libtorch's and do not compete with a second thread pool.

/// Runs `body(range)` over `0..n` split across libtorch's own OpenMP threads (the team its
/// kernels use, found with `dlsym`), so our elementwise kernels are parallel like libtorch's
/// and do not compete with a second thread pool. Serial where no OpenMP runtime is loaded or
/// `n` is small.
pub(super) fn parallel_ranges(n: usize, body: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    const MIN_PER_THREAD: usize = 32_768;
    let threads = (tch::get_num_threads().max(1) as usize).min(n / MIN_PER_THREAD).max(1);
    #[cfg(target_os = "linux")]
    let runtime = (threads > 1).then(runtime).flatten();
    #[cfg(not(target_os = "linux"))]
    let runtime: Option<&Runtime> = None;
    match runtime {
        Some(rt) => rt.run(threads, n, body),
        None => body(0..n),
    }
}

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

type GompParallel = unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
type OmpInt = unsafe extern "C" fn() -> c_int;

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

struct Runtime {
    parallel: GompParallel,
    thread_num: OmpInt,
    num_threads: OmpInt,
}

struct Job<'a> {
    n: usize,
    body: &'a (dyn Fn(std::ops::Range<usize>) + Sync),
    thread_num: OmpInt,
    num_threads: OmpInt,
}

unsafe extern "C" fn trampoline(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `run` passes and keeps alive until GOMP_parallel
    // returns (it returns after every thread of the team has finished).
    let job = unsafe { &*(data as *const Job) };
    let (id, team) = unsafe { ((job.thread_num)() as usize, (job.num_threads)().max(1) as usize) };
    let (chunk, rest) = (job.n / team, job.n % team);
    let start = id * chunk + id.min(rest);
    let end = start + chunk + usize::from(id < rest);
    // A panic must not unwind into C; the bodies here index within their range only.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.body)(start..end))).is_err() {
        std::process::abort();
    }
}

impl Runtime {
    fn run(&self, threads: usize, n: usize, body: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        let job = Job { n, body, thread_num: self.thread_num, num_threads: self.num_threads };
        // SAFETY: the symbols are libgomp's (or a compatible runtime's) entry points with
        // these signatures; `job` outlives the call.
        unsafe { (self.parallel)(trampoline, &job as *const Job as *mut c_void, threads as c_uint, 0) };
    }
}

/// libgomp's entry points, looked up once in the process's global scope (libtorch brings
/// its own libgomp); `None` if they are not there. Linux only (RTLD_DEFAULT is null there).
#[cfg(target_os = "linux")]
fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let find = |name: &[u8]| {
                // SAFETY: RTLD_DEFAULT (null) and a NUL-terminated name.
                let p = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr() as *const c_char) };
                (!p.is_null()).then_some(p)
            };
            let (parallel, thread_num, num_threads) =
                (find(b"GOMP_parallel\0")?, find(b"omp_get_thread_num\0")?, find(b"omp_get_num_threads\0")?);
            // SAFETY: the documented C signatures of these libgomp symbols.
            unsafe {
                Some(Runtime {
                    parallel: std::mem::transmute::<*mut c_void, GompParallel>(parallel),
                    thread_num: std::mem::transmute::<*mut c_void, OmpInt>(thread_num),
                    num_threads: std::mem::transmute::<*mut c_void, OmpInt>(num_threads),
                })
            }
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_ranges_run_on_libtorchs_openmp_team_and_partition_the_range() {
        // libtorch's Linux builds bring libgomp: without it our kernels would run serially.
        #[cfg(target_os = "linux")]
        assert!(runtime().is_some(), "GOMP_parallel not found in the process");
        let n = 1_000_003;
        let seen = std::sync::Mutex::new(Vec::new());
        parallel_ranges(n, &|r| seen.lock().unwrap().push((r, std::thread::current().id())));
        let mut seen = seen.into_inner().unwrap();
        seen.sort_by_key(|(r, _)| r.start);
        let mut next = 0;
        for (r, _) in &seen {
            assert_eq!(r.start, next, "{seen:?}");
            next = r.end;
        }
        assert_eq!(next, n);
        if tch::get_num_threads() > 1 && cfg!(target_os = "linux") {
            assert!(seen.len() > 1 && seen[0].1 != seen[1].1, "not split across threads: {seen:?}");
        }
        // Small jobs stay on the calling thread.
        let calls = std::sync::atomic::AtomicUsize::new(0);
        parallel_ranges(1000, &|r| {
            assert_eq!(r, 0..1000);
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(calls.into_inner(), 1);
    }
}
