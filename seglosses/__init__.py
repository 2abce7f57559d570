"""seglosses (exports are filled in when the modules land)."""
