package org.imsfhir.hapi.modes;

import ca.uhn.fhir.interceptor.api.Hook;
import ca.uhn.fhir.interceptor.api.Interceptor;
import ca.uhn.fhir.interceptor.api.Pointcut;
import ca.uhn.fhir.rest.api.RestOperationTypeEnum;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.server.exceptions.NotImplementedOperationException;
import java.util.EnumSet;
import java.util.Locale;
import java.util.Set;
import org.hl7.fhir.instance.model.api.IBaseConformance;
import org.hl7.fhir.r4.model.CapabilityStatement;

/**
 * Switches that make the test server support LESS than HAPI can, to stand in for hospital
 * servers that do: {@code --ims.disable=transaction,batch,conditional-update,conditional-create}.
 *
 * <p>A disabled interaction disappears from the CapabilityStatement ({@code rest.interaction}
 * {@code transaction} or {@code batch}; {@code conditionalUpdate}/{@code conditionalCreate}
 * false on every resource) and a request that uses it anyway answers 501 Not Implemented with
 * an OperationOutcome: a transaction Bundle, a batch Bundle (each switch leaves the other
 * kind allowed), a {@code PUT [type]?query}, a create with {@code If-None-Exist}, also as
 * entries of a batch or transaction. Nothing is added or changed in what the server does
 * otherwise.
 */
@Interceptor
public class CapabilitySwitches {

	/** What can be switched off. */
	public enum Feature {
		TRANSACTION,
		BATCH,
		CONDITIONAL_UPDATE,
		CONDITIONAL_CREATE;

		static Feature parse(String text) {
			try {
				return valueOf(text.trim().toUpperCase(Locale.ROOT).replace('-', '_'));
			} catch (IllegalArgumentException e) {
				throw new IllegalStateException("ims.disable: unknown feature '" + text.trim()
						+ "' (known: transaction, batch, conditional-update, conditional-create)", e);
			}
		}
	}

	private final Set<Feature> disabled;

	public CapabilitySwitches(Set<Feature> disabled) {
		this.disabled = disabled.isEmpty() ? EnumSet.noneOf(Feature.class) : EnumSet.copyOf(disabled);
	}

	/** Reads {@code ims.disable} (comma separated; empty: nothing disabled). */
	public static Set<Feature> parse(String value) {
		Set<Feature> features = EnumSet.noneOf(Feature.class);
		if (value != null) {
			for (String item : value.split(",")) {
				if (!item.isBlank()) {
					features.add(Feature.parse(item));
				}
			}
		}
		return features;
	}

	public Set<Feature> disabled() {
		return EnumSet.copyOf(disabled.isEmpty() ? EnumSet.noneOf(Feature.class) : disabled);
	}

	@Hook(Pointcut.SERVER_INCOMING_REQUEST_PRE_HANDLED)
	public void refuse(RequestDetails request, RestOperationTypeEnum operation) {
		if (operation == RestOperationTypeEnum.TRANSACTION || operation == RestOperationTypeEnum.BATCH) {
			if (disabled.contains(Feature.TRANSACTION) && isBundleOfType(request, "transaction")) {
				throw notImplemented("transactions are disabled on this server"
						+ (disabled.contains(Feature.BATCH) ? "" : " (batch is available)"));
			}
			if (disabled.contains(Feature.BATCH) && isBundleOfType(request, "batch")) {
				throw notImplemented("batches are disabled on this server"
						+ (disabled.contains(Feature.TRANSACTION) ? "" : " (transaction is available)"));
			}
		}
		for (RequestedInteractions.Interaction wanted : RequestedInteractions.of(request, operation)) {
			if (!wanted.conditional()) {
				continue;
			}
			if (wanted.letter() == 'u' && disabled.contains(Feature.CONDITIONAL_UPDATE)) {
				throw notImplemented("conditional update (PUT " + wanted.resourceType()
						+ "?query) is disabled on this server");
			}
			if (wanted.letter() == 'c' && disabled.contains(Feature.CONDITIONAL_CREATE)) {
				throw notImplemented("conditional create (If-None-Exist) of " + wanted.resourceType()
						+ " is disabled on this server");
			}
		}
	}

	@Hook(Pointcut.SERVER_CAPABILITY_STATEMENT_GENERATED)
	public IBaseConformance describe(IBaseConformance statement) {
		if (statement instanceof CapabilityStatement capability) {
			for (CapabilityStatement.CapabilityStatementRestComponent rest : capability.getRest()) {
				if (disabled.contains(Feature.TRANSACTION)) {
					rest.getInteraction().removeIf(i -> i.getCode() == CapabilityStatement.SystemRestfulInteraction.TRANSACTION);
				}
				if (disabled.contains(Feature.BATCH)) {
					rest.getInteraction().removeIf(i -> i.getCode() == CapabilityStatement.SystemRestfulInteraction.BATCH);
				}
				for (CapabilityStatement.CapabilityStatementRestResourceComponent resource : rest.getResource()) {
					if (disabled.contains(Feature.CONDITIONAL_UPDATE)) {
						resource.setConditionalUpdate(false);
					}
					if (disabled.contains(Feature.CONDITIONAL_CREATE)) {
						resource.setConditionalCreate(false);
					}
				}
			}
		}
		// Changed in place; null lets the other hooks of this pointcut run too (a value would end the chain).
		return null;
	}

	private static boolean isBundleOfType(RequestDetails request, String type) {
		byte[] body = request.loadRequestContents();
		if (body == null) {
			return false;
		}
		// Cheap look at Bundle.type; the full parse happens in HAPI (and RequestedInteractions).
		String text = new String(body, java.nio.charset.StandardCharsets.UTF_8);
		return text.matches("(?s).*\"type\"\\s*:\\s*\"" + type + "\".*")
				|| text.matches("(?s).*<type\\s+value=\"" + type + "\"\\s*/>.*");
	}

	private static NotImplementedOperationException notImplemented(String message) {
		return new NotImplementedOperationException(message);
	}
}
