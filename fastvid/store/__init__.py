"""fastvid.store"""
