"""Baseline schedulers (fcfs-lru, grouped, static) as discrete-event simulations."""
