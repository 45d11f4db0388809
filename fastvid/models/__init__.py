"""fastvid.models"""
