"""Measuring: isolated sweep workers, timing, memory instruments, traces, the analytic cost model."""
