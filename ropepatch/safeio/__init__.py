"""safeio"""
