from django import template

from core.masking import masked_tail

register = template.Library()

register.filter("masked_tail", masked_tail)
