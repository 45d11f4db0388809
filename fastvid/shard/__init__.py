"""fastvid.shard"""
