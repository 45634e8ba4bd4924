"""formats/hf"""
