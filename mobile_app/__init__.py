"""ECG-Lite phone app (Kivy). ``inference`` and ``settings`` import neither Kivy nor torch."""
