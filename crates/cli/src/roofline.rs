//! `ihs roofline`: the matmul throughput libtorch reaches on this machine,
//! the ceiling that `just bench` compares extraction against.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ihs_model::{device::ensure_available, parse_device, DeviceMap, Dtype};
use serde_json::json;
use tch::{Device, Tensor};

#[derive(Debug, Args)]
pub struct RooflineArgs {
    /// Side of the square matrices; omitted, 2048 on a CPU and 8192 on CUDA.
    #[arg(long)]
    pub size: Option<i64>,

    /// Dtype of the matrices: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,

    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,

    /// Timed matmuls; the median, fastest and slowest are reported.
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &RooflineArgs) -> Result<()> {
    let dtype: Dtype = args.dtype.parse()?;
    let device = parse_device(&args.device)?;
    ensure_available(&DeviceMap::single(device, 1))?;
    let size = args.size.unwrap_or(match device {
        Device::Cpu => 2048,
        _ => 8192,
    });
    if size < 64 {
        bail!("--size {size} is too small to measure throughput; use 64 or more");
    }
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }

    let _no_grad = tch::no_grad_guard();
    let a = Tensor::randn([size, size], (dtype.kind(), device));
    let b = Tensor::randn([size, size], (dtype.kind(), device));
    // One untimed product warms up the kernels and the allocator.
    let _ = a.matmul(&b);
    synchronize(device);

    let mut seconds = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let started = Instant::now();
        let product = a.matmul(&b);
        synchronize(device);
        seconds.push(started.elapsed().as_secs_f64());
        drop(product);
    }
    seconds.sort_by(f64::total_cmp);
    let flop = 2.0 * (size as f64).powi(3);
    let gflops = |s: f64| flop / s / 1e9;
    let median = gflops(seconds[seconds.len() / 2]);
    let fastest = gflops(seconds[0]);
    let slowest = gflops(seconds[seconds.len() - 1]);
    let threads = tch::get_num_threads();

    if args.json {
        let report = json!({
            "device": args.device,
            "dtype": dtype.name(),
            "size": size,
            "repeats": args.repeats,
            "threads": threads,
            "gflops_median": median,
            "gflops_min": slowest,
            "gflops_max": fastest,
        });
        println!(
            "{}",
            serde_json::to_string(&report).context("writing the report")?
        );
    } else {
        println!(
            "{size}x{size} {dtype} matmul on {}: {median:.1} GFLOP/s median \
             ({slowest:.1} to {fastest:.1} over {} runs, {threads} threads)",
            args.device, args.repeats
        );
    }
    Ok(())
}

fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}
