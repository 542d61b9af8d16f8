//! A seccomp filter that refuses io_uring system calls with EPERM: what
//! Docker's and containerd's default profiles do, for one process tree and
//! without touching the host's `kernel.io_uring_disabled`. Classic BPF over
//! `prctl`; shared by the test harness and `examples/without_io_uring.rs`.

/// An io_uring system call the filter can refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoUringCall {
    Setup,
    Enter,
    Register,
}

impl IoUringCall {
    pub const ALL: [IoUringCall; 3] = [
        IoUringCall::Setup,
        IoUringCall::Enter,
        IoUringCall::Register,
    ];

    /// The system call number (the same on x86_64 and aarch64).
    fn number(self) -> u32 {
        match self {
            IoUringCall::Setup => 425,
            IoUringCall::Enter => 426,
            IoUringCall::Register => 427,
        }
    }
}

/// A BPF program, built before a fork so that installing it after the
/// fork allocates nothing.
pub struct Filter {
    program: Vec<libc::sock_filter>,
}

// SAFETY: the program is plain data, only read by the kernel during install.
unsafe impl Send for Filter {}
// SAFETY: as above; install takes &self and writes nothing.
unsafe impl Sync for Filter {}

impl Filter {
    pub fn refusing(refused: &[IoUringCall]) -> Filter {
        const LD_W_ABS: u16 = 0x20;
        const JEQ_K: u16 = 0x15;
        const RET_K: u16 = 0x06;
        const RET_ALLOW: u32 = 0x7fff_0000;
        const RET_ERRNO: u32 = 0x0005_0000;
        const ARCH: u32 = if cfg!(target_arch = "aarch64") {
            0xc000_00b7
        } else {
            0xc000_003e
        };
        let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
        let n = refused.len() as u8;
        let mut program = vec![
            op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
            op(JEQ_K, 1, 0, ARCH),
            op(RET_K, 0, 0, RET_ALLOW),
            op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        ];
        for (i, call) in refused.iter().enumerate() {
            // A match jumps over the remaining tests and the allow.
            program.push(op(JEQ_K, n - i as u8, 0, call.number()));
        }
        program.push(op(RET_K, 0, 0, RET_ALLOW));
        program.push(op(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32));
        Filter { program }
    }

    /// Installs the filter on the calling thread (and everything it execs
    /// or forks from now on). Async-signal safe: two prctl calls.
    pub fn install(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integers; PR_SET_SECCOMP reads
        // `prog` and the program it points at, both alive for the call.
        let rc = unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                -1
            } else {
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                    0,
                    0,
                )
            }
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
