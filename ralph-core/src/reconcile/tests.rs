//! Property tests of the reconciler.
