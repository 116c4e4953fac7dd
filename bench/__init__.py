if __name__ != "arvid.bench":  # imported bare with the checkout root on sys.path: see arvid/_checkout.py
    from arvid._checkout import import_installed

    import_installed(__name__)
