"""Data out, on this computer: exports as Dallinger-compatible zips and Parquet (`archive`),
the COPY stream split into tables (`copystream`), PostgreSQL types as pandas dtypes
(`pgtypes`), anonymised copies (`anonymise`). `labdeploy.export` is the entry point."""
