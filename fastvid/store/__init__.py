"""The store, kind-free core: shard sets on disk or behind a URL. format (the format's rules), manifest,
tarindex (DALI indexes), shardmeta (per-shard planning metadata), writer (the atomic, resumable writer, one
per directory), remote (addresses and transport), cache (verified, bounded, crash-safe), reader (open_files:
manifest + per-shard index and metadata only), stream (ShardStream: a rank's shards in plan order, fetch
ahead, evict behind), kinds (the KindReader interface and `fastvid shard` sub-commands the kinds register),
inspect, merge, options, ray_engine and cli. Imports no kind (fastvid.video, fastvid.events)."""
