pub use fleet_sim::fleet::*;
