"""The CPU demo's wing (workspace, warm server, CPU share, seed sweep runner): only the entry points import it."""
