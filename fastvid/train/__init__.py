"""fastvid.train"""
