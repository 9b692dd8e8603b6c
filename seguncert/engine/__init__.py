"""seguncert.engine"""
