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
    for quant in [None, Some(Quant::Int8), Some(Quant::Nf4)] {
        let opts = LoadOptions {
            quant,
            ..LoadOptions::default()
        };
        let m = Model::load_with(&model_path("shakespeare-rwkv6.safetensors"), opts).unwrap();
        // The first tokens on each thread of the pool size that thread's scratch.
        rayon::broadcast(|_| {
            let mut st = m.new_state();
            for tok in [10, 20] {
                m.forward(&[tok], &mut st, Logits::Last).unwrap();
            }
        });
        let mut st = m.new_state();
        m.forward(&[20], &mut st, Logits::Last).unwrap();
        for tok in [30, 40, 50] {
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let logits = m.forward(&[tok], &mut st, Logits::Last).unwrap();
            let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
            assert_eq!(logits.len(), m.cfg.vocab);
            assert_eq!(n, 1, "{quant:?}: token {tok} made {n} allocations");
        }
    }
}
