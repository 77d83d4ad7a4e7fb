//! Runtime CPU-feature dispatch, the one place it is written: a kernel's loop is compiled once
//! portably and once each for AVX-512 and AVX2 (the same source, inlined into
//! `#[target_feature]` functions so the compiler vectorises it for those registers), and the
//! build to run is a [`CpuBuild`] value.
//!
//! A [`CpuBuild`] other than the portable one can only be made by [`CpuBuild::best`] or
//! [`CpuBuild::runnable`], after they detected every feature that build is compiled with; the
//! field that names the build is private to this module. So holding one is what makes calling
//! its `#[target_feature]` function sound, and [`dispatched!`] writes that call, with its one
//! `unsafe` block, for every kernel.

/// A build of the kernels' loops that this CPU can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CpuBuild(Isa);

/// The instruction sets the loops are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl CpuBuild {
    /// The fastest build this CPU runs.
    pub(super) fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                return Self(Isa::Avx512);
            }
            if has_avx2() {
                return Self(Isa::Avx2);
            }
        }
        Self(Isa::Portable)
    }

    /// The plain loop, which every CPU runs: the bits the other builds are tested against.
    #[cfg(test)]
    pub(super) fn portable() -> Self {
        Self(Isa::Portable)
    }

    /// Every build this CPU runs, the portable one last (tests compare them).
    #[cfg(test)]
    pub(super) fn runnable() -> Vec<Self> {
        let mut builds = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                builds.push(Self(Isa::Avx512));
            }
            if has_avx2() {
                builds.push(Self(Isa::Avx2));
            }
        }
        builds.push(Self(Isa::Portable));
        builds
    }

    pub(super) fn isa(self) -> Isa {
        self.0
    }
}

/// Every feature the AVX-512 builds are compiled with (the `target_feature` list in
/// [`dispatched!`]).
#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
}

/// Every feature the AVX2 builds are compiled with.
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// `dispatched! { fn name[T: Copy](a: A, b: B) => portable }` defines `fn name(build: CpuBuild,
/// a: A, b: B)`, which runs `portable(a, b)` compiled for `build`. `portable` must be
/// `#[inline(always)]` (else the builds only call the portable code) and return nothing; the
/// generic parameters, in brackets, are optional.
macro_rules! dispatched {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $([$($generics:tt)*])? ($($arg:ident: $ty:ty),* $(,)?) => $portable:ident
    ) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$($generics)*>)? (build: $crate::kernels::cpu::CpuBuild, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
                unsafe fn avx512 $(<$($generics)*>)? ($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2 $(<$($generics)*>)? ($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                match build.isa() {
                    // SAFETY: a `CpuBuild` naming AVX-512 or AVX2 exists only where
                    // `has_avx512` / `has_avx2` detected every feature these functions are
                    // compiled with (`CpuBuild`'s field is private to `cpu.rs`).
                    $crate::kernels::cpu::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::kernels::cpu::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::kernels::cpu::Isa::Portable => {}
                }
            }
            let _ = build;
            $portable($($arg),*)
        }
    };
}
pub(super) use dispatched;
