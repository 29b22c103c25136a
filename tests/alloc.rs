//! Generating a token allocates nothing but the logits it returns: the forward pass reuses
//! its activations, the CPU kernels their scratch. Counted with a global allocator, so this
//! file holds one test (other tests' threads would be counted too).

mod common;
use common::model_path;
use rwkv::model::{LoadOptions, Quant};
use rwkv::{Logits, Model};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

#[test]
fn a_token_allocates_only_its_logits() {
    let models = [
        "shakespeare-rwkv6.safetensors",
        "tiny-rwkv7-834k.safetensors",
        "tiny-rwkv5-730k.safetensors",
        "rand-rwkv7a-d256-bf16.safetensors",
        "tiny-rwkv4-660k.safetensors",
    ];
    for (quant, file) in [None, Some(Quant::Int8), Some(Quant::Nf4)]
        .into_iter()
        .flat_map(|q| models.map(|f| (q, f)))
    {
        let opts = LoadOptions {
            quant,
            ..LoadOptions::default()
        };
        let m = Model::load_with(&model_path(file), opts).unwrap();
        // The first tokens on each thread of the pool size that thread's scratch.
        rayon::broadcast(|_| {
            let mut st = m.new_state();
            for tok in [10, 20] {
                m.forward(&[tok], &mut st, Logits::Last).unwrap();
            }
        });
        // Measured on a worker of the pool: a call from another thread goes through
        // rayon's injector queue, which allocates a block of it every 63 calls.
        rayon::scope(|_| {
            let mut st = m.new_state();
            m.forward(&[20], &mut st, Logits::Last).unwrap();
            for tok in [30, 40, 50] {
                let before = ALLOCATIONS.load(Ordering::Relaxed);
                let logits = m.forward(&[tok], &mut st, Logits::Last).unwrap();
                let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
                assert_eq!(logits.len(), m.cfg.vocab);
                assert_eq!(n, 1, "{file} {quant:?}: token {tok} made {n} allocations");
            }
        });
    }
}
