//! A whole Fleet in one process, for trying it and for tests: [`fleet::SimFleet`] runs
//! fleet-server on embedded defaults and real agents on the simulated container engine;
//! [`demo`] tells a staged rollout and a bad release stopped at the canary to a human.

pub mod demo;
pub mod fleet;
pub mod run;
