//! The ralph-rs examples: see the programs under `examples/examples/`.
