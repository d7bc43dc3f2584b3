"""Plots and the self-contained HTML report (`mammodino report RUN`)."""
