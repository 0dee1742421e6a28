"""Remote commands as data: builders grouped by subject return argv lists (or `sh -c` scripts
whose values travel as positional parameters); each parser sits next to its builder.
`Remote.run` is the one runner."""
