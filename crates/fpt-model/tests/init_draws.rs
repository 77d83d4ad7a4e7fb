//! The parameter inits draw exactly what the code before `fpt_model::init` drew (same seed, same
//! bits), so seeded runs and the regression expectations are unchanged. Alone in its own test
//! binary: libtorch's generator is global, and tests running beside it would draw from it too.

use fpt_model::init::Init;
use tch::{Device, Kind, Tensor};

#[test]
fn inits_are_the_libtorch_draws() {
    tch::manual_seed(7);
    let a = Init::Normal { std: 0.02 }.tensor(&[4, 5]).unwrap();
    let b = Init::Uniform { bound: 0.3 }.tensor(&[6]).unwrap();
    tch::manual_seed(7);
    let a_ref = Tensor::randn([4, 5], (Kind::Float, Device::Cpu)) * 0.02;
    let b_ref = Tensor::zeros([6], (Kind::Float, Device::Cpu)).uniform_(-0.3, 0.3);
    assert!(a.equal(&a_ref) && b.equal(&b_ref));
}
