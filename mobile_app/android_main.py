"""Entry point of the Android package (buildozer's ``main.py``): start the app with the shipped model."""

from mobile_app.__main__ import main

main([])
