"""Behavioural evaluation: generation, judging, metrics with bootstrap CIs, model comparison."""
