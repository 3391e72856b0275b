"""What runs inside the guest: the generated initramfs and /init (initramfs), and the markers /init prints (markers, pure).
"""
