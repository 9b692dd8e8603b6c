"""seguncert.viz"""
