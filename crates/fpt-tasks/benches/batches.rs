//! Batch assembly throughput: CIFAR-10 with the reference's augmentation (crop, flip, rotate,
//! normalise, patch) at batch 16, and MNIST patches, on synthetic files in the true formats.
//! `cargo bench -p fpt-tasks --bench batches` (rayon uses every core; set RAYON_NUM_THREADS).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fpt_tasks::{load_task, TaskConfig, TrainStream};
use std::path::PathBuf;
use tch::Device;

fn cifar_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fpt-bench-cifar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"];
    for (f, name) in files.iter().enumerate() {
        let bytes: Vec<u8> =
            (0..200 * 3073).map(|i| if i % 3073 == 0 { ((i / 3073 + f) % 10) as u8 } else { (i * 31 % 251) as u8 }).collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

fn bench(c: &mut Criterion) {
    let dir = cifar_dir();
    let mut group = c.benchmark_group("train batch of 16");
    group.throughput(Throughput::Elements(16));
    for (name, augment) in [("cifar10 augmented", true), ("cifar10 plain", false)] {
        let task = load_task(&TaskConfig::named("cifar10", Some(dir.clone())).unwrap(), 0).unwrap();
        let mut stream = TrainStream::new(task, 16, 0, augment).unwrap();
        group.bench_function(name, |b| b.iter(|| stream.next_batch(Device::Cpu)));
    }
    let lra = load_task(&TaskConfig::named("cifar10-lra", Some(dir.clone())).unwrap(), 0).unwrap();
    let mut stream = TrainStream::new(lra, 16, 0, true).unwrap();
    group.bench_function("cifar10-lra augmented", |b| b.iter(|| stream.next_batch(Device::Cpu)));
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
